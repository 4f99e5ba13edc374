"""Check that .ci/lowest-constraints.txt pins exactly the floors pyproject.toml declares.

Every runtime dependency and every user extra (postgresql, mysql, redis, dynamodb,
metrics, toolbar) must declare a floor (``>=``), and the constraints file must pin
each one (``==``) at that floor and nothing else: CI installs those pins in a second
environment and runs the tests there, so a floor that does not work fails.

Usage: python .ci/check_lowest_constraints.py [pyproject.toml [constraints]]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
#: The extras whose floors are users' floors (the testing extra is for us).
STORE_EXTRAS = ("postgresql", "mysql", "redis", "dynamodb", "metrics", "toolbar")

_REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<spec>[^;]*)"
)


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_floors(pyproject: Path) -> tuple[dict[str, str], list[str]]:
    """``({name: floor}, [problems])`` of the runtime dependencies and store extras."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in STORE_EXTRAS:
        requirements += project["optional-dependencies"][extra]
    floors: dict[str, str] = {}
    problems = []
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement)
        name = canonical(match["name"])
        found = re.search(r">=\s*([^,\s]+)", match["spec"])
        if found is None:
            problems.append(f"{requirement!r} in pyproject.toml declares no floor (>=)")
        else:
            floors[name] = found.group(1)
    return floors, problems


def pinned(constraints: Path) -> dict[str, str]:
    """``{name: version}`` of the ``name==version`` lines of a constraints file."""
    pins = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = version.strip()
    return pins


def main(argv: list[str]) -> int:
    pyproject = Path(argv[1]) if len(argv) > 1 else ROOT / "pyproject.toml"
    constraints = Path(argv[2]) if len(argv) > 2 else ROOT / ".ci" / "lowest-constraints.txt"
    floors, problems = declared_floors(pyproject)
    pins = pinned(constraints)
    for name, floor in sorted(floors.items()):
        if name not in pins:
            problems.append(f"{name}>={floor} is not pinned in {constraints.name}")
        elif pins[name] != floor:
            problems.append(
                f"{name}: pyproject.toml says >={floor}, {constraints.name} pins =={pins[name]}"
            )
    for name in sorted(set(pins) - set(floors)):
        # The compiled half of psycopg[binary] is pinned to psycopg's own version.
        if not (name == "psycopg-binary" and pins[name] == floors.get("psycopg")):
            problems.append(
                f"{constraints.name} pins {name}, which pyproject.toml does not declare"
            )
    for problem in problems:
        print(f"lowest versions: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
