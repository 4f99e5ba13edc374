"""The demo in a real browser, and the harness that serves it (:mod:`tests.browser`)."""

from __future__ import annotations

import configparser
import re
import signal
import struct
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from tests.browser import (
    COMBINED,
    DEMO_APP,
    DESKTOP,
    PHONE,
    WAITRESS,
    BrowserParts,
    LiveServers,
    chromium_arguments,
    demo_ini,
    http_answers,
    require_browser,
)
from tests.daemon import ROOT, process_env

#: A page that renders at the device's width (as the demo's pages do).
VIEWPORT_PAGE = (
    "data:text/html,<meta name=viewport content='width=device-width, initial-scale=1'>"
    "<h1 id=title>sized</h1>"
)


def _png_size(path):
    """``(width, height)`` from a PNG file's header."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def _viewport(browser):
    return tuple(browser.driver.execute_script("return [window.innerWidth, window.innerHeight]"))


# --------------------------------------------------------------------------- INI files


def test_demo_ini_serves_the_demo_with_a_store_beside_the_file(tmp_path):
    import plaster

    ini = tmp_path / "live.ini"
    ini.write_text(demo_ini(4321, {"pyncette.poll_interval": "1s", "demo.lines": "a\nb"}))
    settings = plaster.get_settings(str(ini), "app:main")
    assert settings["pyncette.url"] == f"sqlite:///{tmp_path}/jobs.sqlite"
    assert settings["pyncette.poll_interval"] == "1s"  # settings replace the defaults
    assert settings["demo.lines"] == "a\nb"
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ini)
    assert parser["app:main"]["use"] == DEMO_APP
    assert parser["server:main"]["use"] == WAITRESS
    assert parser["server:main"]["listen"] == "127.0.0.1:4321"
    assert parser["logger_root"]["level"] == "INFO"


def test_ini_text_without_a_port_placeholder_is_refused(tmp_path):
    with LiveServers(tmp_path) as servers, pytest.raises(ValueError, match=r"\{port\}"):
        servers.pserve(ini_text="[app:main]\nuse = egg:pyramid_pyncette#demo\n")
    assert servers.processes == []


def test_settings_and_ini_text_together_are_refused(tmp_path):
    with LiveServers(tmp_path) as servers, pytest.raises(ValueError, match="not both"):
        servers.pserve({"pyncette.url": "memory://"}, ini_text="listen = 127.0.0.1:{port}")


# --------------------------------------------------------------------------- processes


@pytest.mark.slow
def test_live_pserve_answers_until_its_servers_close(tmp_path):
    with LiveServers(tmp_path) as servers:
        app = servers.pserve()
        with urllib.request.urlopen(app.url + "/") as response:
            assert response.status == 200
            assert b"pyramid_pyncette demo" in response.read()
        assert app.ini.parent == tmp_path
        assert (tmp_path / "jobs.sqlite").exists()  # the page opened the store in tmp_path
        assert app.server.returncode is None
    assert app.server.returncode is not None
    assert not http_answers(app.url + "/")


@pytest.mark.slow
def test_live_pserve_serves_ini_text_on_its_port(tmp_path):
    text = demo_ini(0, {"demo.marker": "from-text"}).replace(":0\n", ":{port}\n")
    with LiveServers(tmp_path) as servers:
        app = servers.pserve(ini_text=text)
        assert app.registry().settings["demo.marker"] == "from-text"
        with urllib.request.urlopen(app.url + "/jobs.json") as response:
            assert response.status == 200


@pytest.mark.slow
def test_pscheduler_runs_the_served_apps_jobs(tmp_path):
    with LiveServers(tmp_path) as servers:
        app = servers.pserve()
        daemon = app.pscheduler()
        registry = app.registry()
        job = registry.scheduler.add_async_job("demo.say_hello", kwargs={"name": "harness"})
        daemon.wait_until(
            lambda: list(registry.scheduler.get_runs(job_id=job.id)), "the job's run", 30
        )
        [run] = registry.scheduler.get_runs(job_id=job.id)
        assert run.outcome == "succeeded"
        assert run.pid == daemon.pid
        assert "Hello, harness!" in daemon.log()
    assert daemon.returncode == 0  # SIGTERM is pscheduler's clean stop


@pytest.mark.slow
def test_combined_server_runs_the_jobs_itself(tmp_path):
    with LiveServers(tmp_path) as servers:
        app = servers.pserve(server=COMBINED)
        registry = app.registry()
        job = registry.scheduler.add_async_job("demo.say_hello", kwargs={"name": "combined"})
        app.server.wait_for_log("Hello, combined!", timeout=30)
        [run] = registry.scheduler.get_runs(job_id=job.id)
        assert (run.outcome, run.pid) == ("succeeded", app.server.pid)
        with urllib.request.urlopen(app.url + "/") as response:
            assert b"combined mode" in response.read()


def _python(code):
    return [sys.executable, "-c", textwrap.dedent(code)]


@pytest.mark.slow
def test_stop_terminates_first(tmp_path):
    with LiveServers(tmp_path) as servers:
        process = servers.start(
            "sleeper", _python("import time; print('ready', flush=True); time.sleep(60)"), "ready"
        )
        assert process.stop() == -signal.SIGTERM


@pytest.mark.slow
def test_stop_kills_a_process_that_ignores_sigterm(tmp_path):
    code = """\
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print('ready', flush=True)
        time.sleep(60)
        """
    with LiveServers(tmp_path) as servers:
        process = servers.start("stubborn", _python(code), "ready")
        assert process.stop(timeout=0.5) == -signal.SIGKILL


@pytest.mark.slow
def test_a_process_that_exits_early_fails_the_wait_with_its_output(tmp_path):
    with LiveServers(tmp_path) as servers, pytest.raises(pytest.fail.Exception) as excinfo:
        servers.start("doomed", _python("print('boom'); raise SystemExit(3)"), "never printed")
    assert "doomed exited with status 3" in str(excinfo.value)
    assert "boom" in str(excinfo.value)


# --------------------------------------------------------------------------- skip or fail


def test_missing_chromium_skips_naming_the_apt_packages():
    parts = BrowserParts(chromium=None, chromedriver="/usr/bin/chromedriver", selenium="4.20")
    with pytest.raises(pytest.skip.Exception) as excinfo:
        require_browser(parts, required=False)
    reason = str(excinfo.value)
    assert reason.startswith("BROWSER NOT INSTALLED")
    assert "the Chromium browser (/usr/bin/chromium)" in reason
    assert "`apt install chromium chromium-driver`" in reason
    assert "chromedriver (" not in reason


def test_missing_browser_fails_when_backends_are_required():
    parts = BrowserParts(chromium="/usr/bin/chromium", chromedriver=None, selenium=None)
    with pytest.raises(pytest.fail.Exception) as excinfo:
        require_browser(parts, required=True)
    reason = str(excinfo.value)
    assert "chromedriver (/usr/bin/chromedriver)" in reason
    assert "the selenium package" in reason
    assert "apt install chromium chromium-driver" in reason


def test_a_complete_browser_is_neither_skipped_nor_failed():
    parts = BrowserParts(chromium="/c", chromedriver="/d", selenium="4.20")
    assert parts.missing == []
    require_browser(parts, required=True)


def test_ci_installs_chromium_and_its_driver_when_missing():
    script = (Path(ROOT) / ".ci" / "run").read_text()
    wanted = {
        name for names in re.findall(r"missing\+=\(([^)]*)\)", script) for name in names.split()
    }
    assert {"chromium", "chromium-driver"} <= wanted
    assert 'apt-get install -y -qq --no-install-recommends "${missing[@]}"' in script


def test_chromium_runs_without_sandbox_only_as_root():
    as_root = chromium_arguments(root=True, shm_bytes=8 << 30)
    as_user = chromium_arguments(root=False, shm_bytes=8 << 30)
    assert "--no-sandbox" in as_root
    assert "--no-sandbox" not in as_user
    assert "--headless=new" in as_root
    assert "--headless=new" in as_user


def test_chromium_avoids_a_small_dev_shm():
    assert "--disable-dev-shm-usage" in chromium_arguments(root=False, shm_bytes=64 << 20)
    assert "--disable-dev-shm-usage" in chromium_arguments(root=False, shm_bytes=None)
    assert "--disable-dev-shm-usage" not in chromium_arguments(root=False, shm_bytes=8 << 30)


# --------------------------------------------------------------------------- the browser


@pytest.mark.slow
def test_browser_starts_at_the_desktop_size_and_switches_to_a_phone(browser, request):
    assert request.node.get_closest_marker("browser") is not None
    browser.open(VIEWPORT_PAGE)
    assert _viewport(browser) == DESKTOP
    browser.phone()
    assert _viewport(browser) == PHONE
    browser.desktop()
    assert _viewport(browser) == DESKTOP


@pytest.mark.slow
def test_screenshot_saves_the_viewport_under_tmp_path(browser, tmp_path):
    browser.phone()
    browser.open(VIEWPORT_PAGE)
    path = browser.screenshot("phone")
    assert path == tmp_path / "phone.png"
    assert _png_size(path) == PHONE


TALL_PAGE = VIEWPORT_PAGE + "<p>line</p>" * 200


@pytest.mark.slow
def test_full_page_screenshot_is_as_tall_as_the_page(browser, tmp_path):
    browser.phone()
    browser.open(TALL_PAGE)
    height = browser.driver.execute_script("return document.documentElement.scrollHeight")
    assert height > PHONE[1]
    path = browser.screenshot("tall", full_page=True)
    assert path == tmp_path / "tall.png"
    assert _png_size(path) == (PHONE[0], height)
    assert _viewport(browser) == PHONE  # the screen itself is unchanged


INNER_PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]


@pytest.mark.slow
def test_a_failed_browser_test_leaves_its_last_page(tmp_path):
    # A test run of its own: the browser fixture must see that the test failed.
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            """\
            pytest_plugins = ["tests.browser"]

            def test_fails(browser):
                browser.open("data:text/html,<p>last page</p>")
                assert False, "on purpose"
            """
        )
    )
    inner = tmp_path / "inner"
    done = subprocess.run(
        [*INNER_PYTEST, "--basetemp", inner, "--rootdir", tmp_path, tmp_path / "test_inner.py"],
        cwd=tmp_path,
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "on purpose" in done.stdout
    folder = inner / "test_fails0"  # the first tmp_path of that test
    assert _png_size(folder / "failure.png") == DESKTOP
    assert "last page" in (folder / "failure.html").read_text()


# --------------------------------------------------------------------------- the demo


def _rows(driver, name):
    """The demo's job-table rows whose arguments name ``name``."""
    from selenium.webdriver.common.by import By

    xpath = f"//table[@id='jobs']/tbody/tr[td[@class='args'][contains(., '\"{name}\"')]]"
    return driver.find_elements(By.XPATH, xpath)


def _row(driver, name):
    [row] = _rows(driver, name)
    return row


def _cells(driver, name):
    """``(state, last status)`` of the row naming ``name``."""
    from selenium.webdriver.common.by import By

    row = _row(driver, name)
    state = row.find_element(By.CSS_SELECTOR, "td.state").text
    status = row.find_element(By.CSS_SELECTOR, "td:nth-child(10)").text
    return state, status


def _schedule(browser, form_id, **fields):
    """Fill the demo's form ``form_id`` as a user types, and send it."""
    from selenium.webdriver.common.by import By

    form = browser.driver.find_element(By.ID, form_id)
    for name, value in fields.items():
        field = form.find_element(By.NAME, name)
        field.clear()
        field.send_keys(value)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def _refreshed(condition):
    """A wait condition that reloads the page before each look (the demo does not refresh)."""

    def check(driver):
        driver.refresh()
        return condition(driver)

    return check


@pytest.mark.slow
def test_demo_in_a_browser_schedules_pauses_and_runs_jobs(live_pserve, browser):
    from selenium.webdriver.common.by import By

    app = live_pserve()
    driver = browser.driver
    browser.open(app.url + "/")
    browser.wait_for(lambda d: "No jobs are stored." in d.page_source, "the empty demo page")

    # Schedule a job with the form; it is listed.
    _schedule(browser, "hello-every", name="Browser Bob", interval="1")
    browser.wait_for(lambda d: _rows(d, "Browser Bob"), "the interval job in the list")
    assert _cells(driver, "Browser Bob") == ("scheduled", "-")

    # Pause it with its button; its state changes and its button becomes Resume.
    _row(driver, "Browser Bob").find_element(By.XPATH, ".//button[.='Pause']").click()
    browser.wait_for(lambda d: _cells(d, "Browser Bob")[0] == "paused", "the job to be paused")
    _row(driver, "Browser Bob").find_element(By.XPATH, ".//button[.='Resume']")

    # A "hello now" job and one more interval job, listed before any daemon runs.
    _schedule(browser, "hello-now", name="Browser Ada")
    browser.wait_for(lambda d: _rows(d, "Browser Ada"), "the hello-now job in the list")
    ada_id = _row(driver, "Browser Ada").find_element(By.CSS_SELECTOR, "td.id").text
    _schedule(browser, "hello-every", name="Browser Cy", interval="1")
    browser.wait_for(lambda d: _rows(d, "Browser Cy"), "the second interval job in the list")

    # A daemon runs them: the interval job's run shows as its last status, the
    # one-off job leaves the list (it is deleted once it succeeded) ...
    daemon = app.pscheduler()
    browser.wait_for(
        _refreshed(lambda d: _cells(d, "Browser Cy")[1] == "succeeded"),
        "the interval job's run to show",
    )
    browser.wait_for(_refreshed(lambda d: not _rows(d, "Browser Ada")), "the hello-now job to run")
    # ... while the paused job waits, never run.
    assert _cells(driver, "Browser Bob") == ("paused", "-")

    # The store's run history has the hello-now run, made by that daemon.
    [run] = app.registry().scheduler.get_runs(job_id=ada_id)
    assert (run.task, run.outcome, run.pid) == ("demo.say_hello", "succeeded", daemon.pid)
    assert "Hello, Browser Ada!" in daemon.log()

    desktop = browser.screenshot("demo-desktop", full_page=True)
    browser.phone()
    browser.open(app.url + "/")
    phone = browser.screenshot("demo-phone", full_page=True)
    # Whole pages: taller than the screen, the job table and all.
    assert _png_size(desktop)[1] > DESKTOP[1]
    assert _png_size(phone)[1] > PHONE[1]
