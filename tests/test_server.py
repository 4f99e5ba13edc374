"""Combined mode: ``[server:main] use = egg:pyramid_pyncette#main``."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

import pytest

from tests.daemon import ROOT, process_env
from tests.inifiles import logging_sections

THREADED_FORMAT = "%(levelname)s [%(name)s][%(threadName)s] %(message)s"


def _write_ini(tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    ini = tmp_path / "combined.ini"
    ini.write_text(
        textwrap.dedent(
            f"""\
            [app:main]
            use = call:tests.procapp:main
            record_dir = {records}
            pyncette.url = sqlite:///{tmp_path}/jobs.sqlite
            pyncette.poll_interval = 30s

            [server:main]
            use = egg:pyramid_pyncette#main
            listen = 127.0.0.1:0

            LOGGING
            """
        ).replace(
            "LOGGING", logging_sections("%(levelname)s [%(name)s][%(threadName)s] %(message)s")
        )
    )
    return str(ini), str(records)


def _wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class _Output:
    """Collects a process's stderr in a thread so the pipe never fills."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)


def test_find_registry_unwraps_middleware():
    from pyramid.config import Configurator

    from pyramid_pyncette.server import find_registry

    config = Configurator()
    router = config.make_wsgi_app()

    class Middleware:
        def __init__(self, app):
            self.app = app

    assert find_registry(Middleware(Middleware(router))) is config.registry


def test_find_registry_rejects_a_plain_wsgi_app():
    from pyramid.exceptions import ConfigurationError

    from pyramid_pyncette.server import find_registry

    def app(environ, start_response):  # pragma: no cover - never called
        return []

    with pytest.raises(ConfigurationError, match="Pyramid applications only"):
        find_registry(app)


def test_start_worker_needs_the_include():
    from pyramid.config import Configurator
    from pyramid.exceptions import ConfigurationError

    from pyramid_pyncette.server import start_worker

    with pytest.raises(ConfigurationError, match="includes pyramid_pyncette"):
        start_worker(Configurator().registry)


def test_combined_server_hides_store_passwords_in_every_log_line(monkeypatch):
    import logging

    import waitress

    from pyramid_pyncette import server
    from pyramid_pyncette.redaction import RedactingFilter

    handler = logging.StreamHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    calls = []
    monkeypatch.setattr(server, "find_registry", lambda app: "registry")
    monkeypatch.setattr(server, "start_worker", lambda registry: ("worker", "thread"))
    monkeypatch.setattr(server, "stop_worker", lambda worker, thread: calls.append("stopped"))
    monkeypatch.setattr(waitress, "serve", lambda app, **settings: calls.append("served"))
    try:
        assert server.server_factory({})(object()) == 0
        assert calls == ["served", "stopped"]
        assert any(isinstance(f, RedactingFilter) for f in handler.filters)
    finally:
        root.removeHandler(handler)


def test_bootstrap_of_a_combined_ini_starts_no_loop(tmp_path):
    from pyramid.paster import bootstrap

    ini, _ = _write_ini(tmp_path)
    sys.path.insert(0, ROOT)
    before = {thread.name for thread in threading.enumerate()}
    env = bootstrap(ini)
    try:
        after = {thread.name for thread in threading.enumerate()}
        assert "pyncette-worker" not in after - before
        assert not (tmp_path / "jobs.sqlite").exists()
    finally:
        env["closer"]()


@pytest.mark.slow
def test_pserve_serves_and_runs_jobs_committed_by_its_requests(tmp_path):
    from tests.procapp import read_runs

    ini, records = _write_ini(tmp_path)
    env = process_env()
    server = subprocess.Popen(
        [sys.executable, "-m", "pyramid.scripts.pserve", ini],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    output = _Output(server.stderr)
    try:
        match = _wait_for(
            lambda: re.search(r"Serving on http://127\.0\.0\.1:(\d+)", output.text),
            what="the server to listen",
        )
        port = int(match.group(1))
        _wait_for(lambda: "started" in output.text, what="the worker to start")
        started = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/add?id=from-web") as response:
            assert response.read() == b"from-web"
        # The poll interval is 30 s: a prompt run proves the commit woke the worker.
        _wait_for(lambda: read_runs(records), timeout=10, what="the job to run")
        assert time.monotonic() - started < 10
        assert [job_id for job_id, _, _ in read_runs(records)] == ["from-web"]
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        assert server.returncode == 0, output.text
        assert "stopped (1 succeeded, 0 failed)" in output.text
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
