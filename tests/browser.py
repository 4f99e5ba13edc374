"""A real browser against a real server: fixtures for end-to-end tests.

As a pytest plugin (``pytest_plugins`` in ``tests/conftest.py``) this module
provides two fixtures.

``live_pserve(settings=None, ini_text=None, *, app=DEMO_APP, server=WAITRESS)``
    Writes an INI file into the test's ``tmp_path``, starts ``pserve`` on it
    in a subprocess, waits until it answers HTTP and returns a
    :class:`LiveApp`: ``.url`` (the base URL, no trailing slash), ``.ini``
    (the file's path) and ``.server`` (its :class:`LiveProcess`). By default
    the INI serves the demo (``egg:pyramid_pyncette#demo``) with plain
    waitress on a free port of 127.0.0.1, a SQLite store in ``tmp_path``
    (``jobs.sqlite``), a 0.2 s poll interval and logging at INFO;
    ``settings`` add ``[app:main]`` lines or replace those defaults (values
    are written raw: ``%(here)s`` is the folder, ``%%`` a percent sign).
    ``ini_text`` is a whole INI file instead, with ``{port}`` where the free
    port goes (``listen = 127.0.0.1:{port}``). ``server=COMBINED`` runs jobs
    in the server process too.

    ``LiveApp.pscheduler(*args)`` starts the daemon that runs jobs on the
    same INI, waits for its worker to start and returns its
    :class:`LiveProcess` (``.pid``, ``.log()``); ``LiveApp.registry()``
    bootstraps the same application in the test process, to look into the
    store (``registry.scheduler.get_runs(...)``).

    Every process is stopped by pid when the test ends (SIGTERM, then
    SIGKILL after :data:`STOP_TIMEOUT` seconds); its output is kept in a
    ``*.log`` file beside the INI and quoted when it fails to start.

``browser``
    A :class:`Browser`: headless Chromium (``/usr/bin/chromium``) driven by
    Selenium 4 through the system ``chromedriver`` (never a downloaded one),
    with a desktop viewport (:data:`DESKTOP`); ``browser.phone()`` switches
    to a 390x844 phone screen, ``browser.desktop()`` back. ``.driver`` is the
    Selenium WebDriver; ``.open(url)``, ``.wait_for(condition, what)`` (an
    explicit, bounded ``WebDriverWait``) and ``.screenshot(name, full_page=False)``
    (a PNG under the test's ``tmp_path``) cover the usual steps. When the test
    fails, a screenshot and the page source are saved as ``failure.png`` and
    ``failure.html`` there. Tests using it get the ``browser`` marker.

    Without Chromium, ``chromedriver`` or Selenium the test is skipped with
    a reason naming ``apt install chromium chromium-driver``;
    ``--require-backends`` (or ``PYNCETTE_REQUIRE_BACKENDS=1``, as CI sets)
    makes that a failure.

A dashboard scenario reads::

    @pytest.mark.slow
    def test_dashboard_pauses_a_job(live_pserve, browser):
        app = live_pserve({"pyncette.dashboard.permission": "NO_PERMISSION_REQUIRED"})
        daemon = app.pscheduler()
        browser.open(app.url + "/pyncette/jobs")
        browser.wait_for(lambda driver: ..., "the job list")
        browser.screenshot("jobs")
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import PSCHEDULER, process_env
from tests.inifiles import logging_sections
from tests.servers import HOST, backends_required, free_port, handle_unavailable
from tests.servers import _die_with_parent as die_with_parent

__all__ = [
    "COMBINED",
    "DEMO_APP",
    "DESKTOP",
    "PHONE",
    "WAITRESS",
    "Browser",
    "BrowserParts",
    "LiveApp",
    "LiveProcess",
    "LiveServers",
    "chromium_arguments",
    "demo_ini",
    "http_answers",
    "locate_browser",
    "require_browser",
    "start_browser",
]

#: The application the default INI serves.
DEMO_APP = "egg:pyramid_pyncette#demo"
#: Plain waitress: jobs run only in a ``pscheduler`` daemon.
WAITRESS = "egg:waitress#main"
#: The combined server: waitress plus a worker thread running jobs.
COMBINED = "egg:pyramid_pyncette#main"

#: Seconds a process may take to answer (``pserve``) or to log its start (``pscheduler``).
START_TIMEOUT = 60.0
#: Seconds a process may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 20.0
#: Seconds a browser wait lasts by default (the machine may be busy).
WAIT_TIMEOUT = 30.0

#: A phone screen in CSS pixels (width, height): the narrowest page to stay readable.
PHONE = (390, 844)
#: A laptop screen in CSS pixels (width, height).
DESKTOP = (1280, 800)

#: Where Debian's ``chromium`` and ``chromium-driver`` packages put their programs.
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: The packages that provide them.
APT_PACKAGES = "chromium chromium-driver"

#: Below this much shared memory Chromium crashes on big pages unless told to avoid it.
SMALL_SHM_BYTES = 1 << 30

#: What a worker logs once it runs (see ``Worker.run``).
WORKER_STARTED = " started ("


# --------------------------------------------------------------------------- processes


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


class LiveProcess:
    """A child process of a test, with its output in a log file; stopped by pid."""

    def __init__(
        self, name: str, argv: list[str], log_path: Path, cwd: Path, env: Mapping[str, str]
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Should the test run itself be killed, the kernel stops the process.
                preexec_fn=die_with_parent(signal.SIGTERM),
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or ``None`` while it runs."""
        return self.process.poll()

    def log(self) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_until(self, condition: Callable[[], Any], what: str, timeout: float) -> Any:
        """Poll ``condition()`` until it is truthy; fail if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if self.returncode is not None:
                pytest.fail(
                    f"{self.name} exited with status {self.returncode} before {what}; "
                    f"its output ({self.log_path}):\n{_tail(self.log())}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out after {timeout:.0f}s waiting for {what} ({self.name}, pid "
                    f"{self.pid}); its output ({self.log_path}):\n{_tail(self.log())}",
                    pytrace=False,
                )
            time.sleep(0.05)

    def wait_for_log(self, text: str, timeout: float = START_TIMEOUT) -> None:
        """Wait until the process has written ``text``."""
        self.wait_until(lambda: text in self.log(), f"{text!r} in its output", timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """Stop the process by pid: SIGTERM, then SIGKILL after ``timeout`` seconds.

        Returns its exit status (negative: the signal that ended it).
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def http_answers(url: str) -> bool:
    """Whether an HTTP server answers ``url`` (with any status)."""
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except urllib.error.HTTPError:
        return True  # an error page is an answer
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def demo_ini(
    port: int,
    settings: Mapping[str, str] | None = None,
    *,
    app: str = DEMO_APP,
    server: str = WAITRESS,
) -> str:
    """The text of an INI file serving ``app`` with ``server`` on ``127.0.0.1:port``.

    ``[app:main]`` has a SQLite store beside the file and a 0.2 s poll
    interval, overridden or extended by ``settings``; logging goes to
    stderr from INFO up.
    """
    values = {
        "pyncette.url": "sqlite:///%(here)s/jobs.sqlite",
        "pyncette.poll_interval": "0.2s",
        **(settings or {}),
    }
    # A multi-line value continues on indented lines.
    lines = "\n".join(f"{key} = {value}".replace("\n", "\n    ") for key, value in values.items())
    return (
        f"[app:main]\nuse = {app}\n{lines}\n\n"
        f"[server:main]\nuse = {server}\nlisten = {HOST}:{port}\n\n" + logging_sections()
    )


class LiveApp:
    """An application served by ``pserve`` in a subprocess (see ``live_pserve``)."""

    def __init__(self, servers: LiveServers, ini: Path, url: str, server: LiveProcess) -> None:
        self.servers = servers
        self.ini = ini
        self.url = url
        self.server = server

    def pscheduler(self, *args: str, ready: str | None = WORKER_STARTED) -> LiveProcess:
        """Start ``pscheduler args... <ini>``; wait until its log shows ``ready`` (if not None)."""
        return self.servers.start(
            f"pscheduler-{self.ini.stem}", [*PSCHEDULER, *args, str(self.ini)], ready=ready
        )

    def registry(self) -> Any:
        """The application's registry, bootstrapped in this process (closed at teardown)."""
        from pyramid.paster import bootstrap

        env = bootstrap(str(self.ini))
        self.servers.on_close(env["closer"])
        registry = env["registry"]
        self.servers.on_close(registry.scheduler.repository.close)
        return registry


class LiveServers:
    """The processes of one test: ``pserve`` servers and ``pscheduler`` daemons.

    A context manager; leaving it stops every process by pid, newest first,
    and runs the registered clean-ups.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes: list[LiveProcess] = []
        self._cleanups: list[Callable[[], Any]] = []

    def __enter__(self) -> LiveServers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def on_close(self, cleanup: Callable[[], Any]) -> None:
        """Call ``cleanup`` when the servers are closed (before the processes stop)."""
        self._cleanups.append(cleanup)

    def start(self, name: str, argv: list[str], ready: str | None = None) -> LiveProcess:
        """Start ``argv`` in :attr:`folder`, its output in ``<name>.log``; wait for ``ready``."""
        taken = {process.name for process in self.processes}
        unique, n = name, 1
        while unique in taken:
            n += 1
            unique = f"{name}-{n}"
        process = LiveProcess(
            unique, argv, self.folder / f"{unique}.log", cwd=self.folder, env=process_env()
        )
        self.processes.append(process)
        if ready is not None:
            process.wait_for_log(ready)
        return process

    def pserve(
        self,
        settings: Mapping[str, str] | None = None,
        ini_text: str | None = None,
        *,
        app: str = DEMO_APP,
        server: str = WAITRESS,
    ) -> LiveApp:
        """Serve an INI file with ``pserve``; see the module docstring."""
        port = free_port()
        if ini_text is None:
            text = demo_ini(port, settings, app=app, server=server)
        elif settings is not None:
            raise ValueError("live_pserve: give settings or ini_text, not both")
        elif "{port}" not in ini_text:
            raise ValueError(
                "live_pserve: ini_text has no {port}: write `listen = 127.0.0.1:{port}` in its "
                "[server:main] section, so the server listens where the test looks for it"
            )
        else:
            text = ini_text.replace("{port}", str(port))
        count = sum(1 for process in self.processes if process.name.startswith("pserve"))
        stem = "live" if count == 0 else f"live-{count + 1}"
        ini = self.folder / f"{stem}.ini"
        ini.write_text(text)
        url = f"http://{HOST}:{port}"
        process = self.start(
            f"pserve-{stem}", [sys.executable, "-m", "pyramid.scripts.pserve", str(ini)]
        )
        process.wait_until(lambda: http_answers(url + "/"), f"{url} to answer", START_TIMEOUT)
        return LiveApp(self, ini, url, process)

    def close(self) -> None:
        """Run the clean-ups, then stop every process (newest first)."""
        cleanups, self._cleanups = self._cleanups, []
        for cleanup in reversed(cleanups):
            with contextlib.suppress(Exception):
                cleanup()
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def live_pserve(tmp_path: Path) -> Iterator[Callable[..., LiveApp]]:
    """``live_pserve(settings=None, ini_text=None, *, app=..., server=...)``: a served INI.

    See the module docstring; every process it started stops with the test.
    """
    with LiveServers(tmp_path) as servers:
        yield servers.pserve


# --------------------------------------------------------------------------- the browser


@dataclass(frozen=True)
class BrowserParts:
    """What a browser test needs, as found on this machine (``None``: missing)."""

    chromium: str | None
    chromedriver: str | None
    selenium: str | None

    @property
    def missing(self) -> list[str]:
        """Descriptions of the missing parts (empty when all are there)."""
        missing = []
        if self.chromium is None:
            missing.append(f"the Chromium browser ({CHROMIUM})")
        if self.chromedriver is None:
            missing.append(f"chromedriver ({CHROMEDRIVER})")
        if self.selenium is None:
            missing.append('the selenium package (`pip install -e ".[testing]"`)')
        return missing

    def unavailable_reason(self) -> str:
        """A loud skip reason naming what is missing and how to install it."""
        return (
            f"BROWSER NOT INSTALLED: browser tests need {', '.join(self.missing)}. "
            f"Install Chromium and its driver with `apt install {APT_PACKAGES}` "
            "(Debian/Ubuntu). Pass --require-backends or set PYNCETTE_REQUIRE_BACKENDS=1 to "
            "make this a failure instead of a skip."
        )


def _program(path: str, *names: str) -> str | None:
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def locate_browser() -> BrowserParts:
    """Find Chromium, chromedriver and Selenium (Debian's paths first, then ``PATH``)."""
    selenium = None
    if importlib.util.find_spec("selenium") is not None:
        import selenium as selenium_package

        selenium = str(selenium_package.__version__)
    return BrowserParts(
        chromium=_program(CHROMIUM, "chromium", "chromium-browser"),
        chromedriver=_program(CHROMEDRIVER, "chromedriver"),
        selenium=selenium,
    )


def require_browser(parts: BrowserParts, *, required: bool) -> None:
    """Skip the test when a part is missing, or fail it when backends are ``required``."""
    if parts.missing:
        handle_unavailable(parts.unavailable_reason(), required=required)


def chromium_arguments(*, root: bool, shm_bytes: int | None) -> list[str]:
    """Chromium's command-line switches.

    Headless always. ``--no-sandbox`` only for root, whom Chromium refuses to
    sandbox; ``--disable-dev-shm-usage`` only when ``/dev/shm`` is small
    (containers default to 64 MB) or absent (``shm_bytes`` ``None``).
    """
    arguments = ["--headless=new", "--disable-gpu", "--no-first-run", "--hide-scrollbars"]
    if root:
        arguments.append("--no-sandbox")
    if shm_bytes is None or shm_bytes < SMALL_SHM_BYTES:
        arguments.append("--disable-dev-shm-usage")
    return arguments


def _shm_bytes() -> int | None:
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return None
    return stats.f_blocks * stats.f_frsize


class Browser:
    """A headless Chromium for one test (see the module docstring)."""

    def __init__(self, driver: Any, folder: Path) -> None:
        #: The Selenium WebDriver.
        self.driver = driver
        #: Where :meth:`screenshot` saves.
        self.folder = folder
        self.size: tuple[int, int] = DESKTOP

    def resize(self, size: tuple[int, int], *, mobile: bool) -> None:
        """Give pages a ``size`` viewport in CSS pixels (``mobile``: as a phone renders).

        Emulated through the DevTools protocol: a headless window's viewport
        is not the window size, and a phone's must be exact.
        """
        width, height = size
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )
        self.size = size

    def phone(self) -> None:
        """Show pages as a 390x844 phone screen does (:data:`PHONE`)."""
        self.resize(PHONE, mobile=True)

    def desktop(self) -> None:
        """Show pages as a laptop screen does (:data:`DESKTOP`)."""
        self.resize(DESKTOP, mobile=False)

    def open(self, url: str) -> None:
        """Load ``url`` (Selenium waits for the page's load event)."""
        self.driver.get(url)

    def wait_for(
        self, condition: Callable[[Any], Any], what: str, timeout: float = WAIT_TIMEOUT
    ) -> Any:
        """Wait until ``condition(driver)`` is truthy and return it; fail naming ``what``.

        An explicit ``WebDriverWait``: a missing or stale element counts as
        "not yet", so a condition may look up elements of a page that is
        still being replaced.
        """
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
        )
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(
            self.driver,
            timeout,
            poll_frequency=0.2,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        )
        return wait.until(condition, f"timed out after {timeout:.0f}s waiting for {what}")

    def screenshot(self, name: str, *, full_page: bool = False) -> Path:
        """Save ``<name>.png`` in the test's folder and return its path.

        The viewport by default; ``full_page`` takes the whole page, as tall
        (and as wide) as its content.
        """
        path = self.folder / f"{name}.png"
        if full_page:
            content = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": content["width"], "height": content["height"]}
            shot = self.driver.execute_cdp_cmd(
                "Page.captureScreenshot",
                {"format": "png", "captureBeyondViewport": True, "clip": {**clip, "scale": 1}},
            )
            path.write_bytes(base64.b64decode(shot["data"]))
        elif not self.driver.save_screenshot(str(path)):
            raise AssertionError(f"the browser could not save the screenshot {path}")
        return path

    def close(self, *, failed: bool = False) -> None:
        """Quit the browser; after a ``failed`` test keep its last page for the post-mortem."""
        try:
            if failed:
                with contextlib.suppress(Exception):
                    self.screenshot("failure")
                with contextlib.suppress(Exception):
                    (self.folder / "failure.html").write_text(self.driver.page_source)
        finally:
            self.driver.quit()


def start_browser(parts: BrowserParts, folder: Path) -> Browser:
    """Start headless Chromium with the system chromedriver, at the desktop size.

    ``parts`` must have everything (see :func:`require_browser`). The
    driver's own log goes to ``chromedriver.log`` in ``folder``.
    """
    from selenium import webdriver

    assert parts.chromium and parts.chromedriver, parts.missing
    options = webdriver.ChromeOptions()
    options.binary_location = parts.chromium
    for argument in chromium_arguments(root=os.geteuid() == 0, shm_bytes=_shm_bytes()):
        options.add_argument(argument)
    # An explicit driver path: Selenium Manager (which downloads drivers) never runs.
    service = webdriver.ChromeService(
        executable_path=parts.chromedriver, log_output=str(folder / "chromedriver.log")
    )
    driver = webdriver.Chrome(options=options, service=service)
    browser = Browser(driver, folder)
    try:
        browser.desktop()
    except BaseException:
        driver.quit()
        raise
    return browser


_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # Remembered for the browser fixture's teardown, which saves the last page.
    outcome: Any = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        item.stash[_FAILED] = True


@pytest.fixture
def browser(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Browser]:
    """A headless Chromium (see the module docstring); skipped or failed when missing."""
    parts = locate_browser()
    required = backends_required(request.config.getoption("require_backends", default=False))
    require_browser(parts, required=required)
    started = start_browser(parts, tmp_path)
    yield started
    started.close(failed=request.node.stash.get(_FAILED, False))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # `-m "not browser"` deselects every test that opens a browser.
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)


def pytest_report_header(config: pytest.Config) -> str:
    parts = locate_browser()
    found = ", ".join(
        f"{name}={value or 'MISSING'}"
        for name, value in (
            ("chromium", parts.chromium),
            ("chromedriver", parts.chromedriver),
            ("selenium", parts.selenium),
        )
    )
    required = backends_required(config.getoption("require_backends", default=False))
    return f"browser: {found} (missing browser {'fail' if required else 'skip'})"
