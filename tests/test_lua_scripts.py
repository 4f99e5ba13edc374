"""The Redis store's Lua scripts live in .lua files that the package ships."""

from __future__ import annotations

import fnmatch
import sys
from importlib import resources
from pathlib import Path

import pytest

pytest.importorskip("redis")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the oldest Pythons
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent


def _lua_files():
    folder = resources.files("pyramid_pyncette.repository").joinpath("lua")
    return sorted(item.name for item in folder.iterdir() if item.name.endswith(".lua"))


def _scripts():
    from pyramid_pyncette.repository import redis as store

    return [
        store._CLAIM,
        store._EXTEND,
        store._WRITE,
        store._LIST,
        store._NEXT_DUE,
        store._PROBE,
        store._QUEUE_COUNTS,
    ]


def test_every_lua_file_is_part_of_a_script():
    scripts = _scripts()
    folder = resources.files("pyramid_pyncette.repository").joinpath("lua")
    for name in _lua_files():
        text = folder.joinpath(name).read_text(encoding="utf-8")
        assert any(text in script for script in scripts), name


def test_scripts_begin_with_the_shared_helpers_they_call():
    from pyramid_pyncette.repository import redis as store

    common = resources.files("pyramid_pyncette.repository").joinpath("lua", "common.lua")
    helpers = common.read_text(encoding="utf-8")
    for script in (store._CLAIM, store._EXTEND, store._WRITE):
        assert helpers in script
        assert script.index(helpers) < script.index("local jobs")
    for script in (store._LIST, store._NEXT_DUE, store._PROBE):
        assert helpers not in script


def test_the_package_data_ships_every_lua_file():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    package_data = config["tool"]["setuptools"]["package-data"]
    patterns = package_data.get("pyramid_pyncette.repository", [])
    patterns += [p for p in package_data.get("pyramid_pyncette", []) if p.startswith("repository/")]
    names = _lua_files()
    assert names
    for name in names:
        assert any(
            fnmatch.fnmatch(f"lua/{name}", p.removeprefix("repository/")) for p in patterns
        ), name
