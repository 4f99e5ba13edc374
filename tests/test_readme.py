"""The README's quick start, testing example, systemd unit and pshell set-up work as written.

The files of the quick-start app are the README's fenced blocks whose
first line names a path (``# myapp/jobs.py``); the tests write them to a
temporary folder and run them, so the README cannot drift from what works.
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.daemon import PSCHEDULER, ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

README = Path(ROOT) / "README.md"

_BLOCK = re.compile(r"^```[a-z]*\n# (?P<path>[\w./-]+)\n(?P<body>.*?)^```$", re.M | re.S)


def readme_files() -> dict[str, str]:
    """The README's blocks that start with a ``# path`` line, by path (that line included)."""
    text = README.read_text(encoding="utf-8")
    return {m["path"]: f"# {m['path']}\n{m['body']}" for m in _BLOCK.finditer(text)}


QUICK_START = (
    "pyproject.toml",
    "development.ini",
    "production.ini",
    "myapp/__init__.py",
    "myapp/jobs.py",
    "myapp/views.py",
    "tests/test_signup.py",
)


def _install_quick_start(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Write the quick-start app and make it importable as if ``pip install -e .`` ran.

    The distribution's metadata (its entry points, which ``use = egg:myapp``
    looks up) is written from the README's ``pyproject.toml``, without a
    build, so the test needs no network and no build tools.
    """
    files = readme_files()
    missing = [path for path in QUICK_START if path not in files]
    assert not missing, f"the README has no block for {missing}"
    project = tmp_path / "myapp"
    for path in QUICK_START:
        target = project / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(files[path], encoding="utf-8")
    meta = tomllib.loads(files["pyproject.toml"])
    assert meta["build-system"]["build-backend"] == "setuptools.build_meta"
    name, version = meta["project"]["name"], meta["project"]["version"]
    assert "pyramid_pyncette" in meta["project"]["dependencies"]
    dist_info = tmp_path / "site" / f"{name}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    lines = []
    for group, entries in meta["project"]["entry-points"].items():
        lines.append(f"[{group}]")
        lines.extend(f"{key} = {value}" for key, value in entries.items())
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(tmp_path / "site"), str(project), ROOT, env.get("PYTHONPATH", "")]
    )
    return project, env


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.slow
def test_readme_quick_start_app_schedules_and_runs_a_job_with_pscheduler(tmp_path):
    project, env = _install_quick_start(tmp_path)
    signup = textwrap.dedent(
        """
        import webtest
        from pyramid.paster import get_app

        print(webtest.TestApp(get_app("development.ini")).get("/signup").json)
        """
    )
    web = _run([sys.executable, "-c", signup], project, env)
    assert web.returncode == 0, web.stderr
    assert "{'ok': True}" in web.stdout

    daemon = _run([*PSCHEDULER, "--once", "development.ini"], project, env)
    assert daemon.returncode == 0, daemon.stderr
    # The INI's logging sections make the daemon and the jobs say what they do.
    assert re.search(r"worker \w+ started", daemon.stderr), daemon.stderr
    assert "welcome 42 (attempt 1)" in daemon.stderr
    assert re.search(r"worker \w+ stopped", daemon.stderr), daemon.stderr

    listing = _run([*PSCHEDULER, "--list", "production.ini"], project, env)
    assert listing.returncode == 0, listing.stderr
    assert "daily-42" in listing.stdout
    assert "myapp.jobs:nightly_cleanup" in listing.stdout


@pytest.mark.slow
def test_readme_testing_example_passes_against_the_quick_start_app(tmp_path):
    project, env = _install_quick_start(tmp_path)
    result = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_signup.py"],
        project,
        env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_readme_systemd_unit_runs_pscheduler_and_does_not_restart_on_usage_errors():
    from pyramid_pyncette.scripts.pscheduler import EXIT_USAGE

    unit_text = readme_files()["/etc/systemd/system/myapp-scheduler.service"]
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.read_string(unit_text)
    service = unit["Service"]
    command = service["ExecStart"].split()
    assert command[0].endswith("/bin/pscheduler")
    assert command[-1] == "production.ini"
    assert service["KillSignal"] == "SIGTERM"
    assert service["RestartPreventExitStatus"] == str(EXIT_USAGE)
    assert int(service["TimeoutStopSec"]) > 0
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_pshell_help_lists_each_name_with_one_short_line(tmp_path):
    from pyramid.scripts.pshell import PShellCommand

    ini = tmp_path / "app.ini"
    ini.write_text(
        textwrap.dedent(
            f"""
            [app:main]
            use = call:tests.procapp:main
            pyncette.url = sqlite:///{tmp_path}/jobs.sqlite
            record_dir = {tmp_path}

            [pshell]
            setup = pyramid_pyncette.pshell.setup
            """
        ),
        encoding="utf-8",
    )
    seen: dict[str, object] = {}

    def shell(env, help):
        seen["help"] = help
        seen["names"] = set(env)

    command = PShellCommand(["pshell", str(ini)], quiet=True)
    assert command.run(shell=shell) in (0, None)
    assert {"tm", "scheduler", "immediate_scheduler"} <= seen["names"]
    lines = {line.split()[0]: line for line in str(seen["help"]).splitlines()[1:]}
    for name in ("tm", "scheduler", "immediate_scheduler"):
        assert len(lines[name]) <= 100, lines[name]
    assert "tm.commit()" in lines["scheduler"]
    # A class docstring pasted onto one line is what the help must not show.
    assert "Validation happens at call time" not in seen["help"]
