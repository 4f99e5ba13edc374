"""The dashboard in a real browser: a served demo, a daemon, headless Chromium.

The browser harness (:mod:`tests.browser`) serves the demo (which includes
the dashboard, open to every visitor) with ``pserve`` and runs its jobs with
``pscheduler``; the test presses the dashboard's buttons as an operator does.
"""

from __future__ import annotations

import pytest


def _state(driver, job_id):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'tr[data-job-id="{job_id}"] td.state').text


def _run_outcomes(driver):
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(By.CSS_SELECTOR, "table.runs tr[data-run-id] td.outcome")
    return [cell.text for cell in cells]


@pytest.mark.slow
def test_dashboard_in_a_browser_pauses_a_job_and_runs_one_now(live_pserve, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    app = live_pserve()
    scheduler = app.registry().scheduler
    for job_id in ("pausable", "runnable"):
        scheduler.add_interval_job(
            "demo.say_hello", interval="1h", kwargs={"name": job_id}, job_id=job_id
        )
    daemon = app.pscheduler()
    driver = browser.driver

    # The Jobs page lists both, scheduled.
    browser.open(app.url + "/pyncette/")
    browser.wait_for(lambda d: _state(d, "pausable") == "scheduled", "the job list")
    assert _state(driver, "runnable") == "scheduled"

    # Pause one with its row's button: the page comes back saying so, the row's
    # state is paused and its button is Resume.
    row = driver.find_element(By.CSS_SELECTOR, 'tr[data-job-id="pausable"]')
    row.find_element(By.CSS_SELECTOR, 'button[name="action"][value="pause"]').click()
    browser.wait_for(lambda d: _state(d, "pausable") == "paused", "the job to show as paused")
    assert driver.find_element(By.CSS_SELECTOR, "p.notice").text == "Job 'pausable' is paused."
    row = driver.find_element(By.CSS_SELECTOR, 'tr[data-job-id="pausable"]')
    row.find_element(By.CSS_SELECTOR, 'button[name="action"][value="resume"]')
    assert scheduler.get_job("pausable").paused
    browser.screenshot("dashboard-jobs", full_page=True)

    # Run the other now from its page; with auto-refresh every 5 s the page
    # shows the daemon's run without a reload by hand.
    driver.find_element(By.CSS_SELECTOR, 'tr[data-job-id="runnable"] td.id a').click()
    browser.wait_for(
        lambda d: (
            d.find_element(By.CSS_SELECTOR, "div.job").get_attribute("data-job-id") == "runnable"
        ),
        "the job's page",
    )
    assert _run_outcomes(driver) == []
    driver.find_element(By.CSS_SELECTOR, 'button[name="action"][value="run"]').click()
    browser.wait_for(
        lambda d: (
            d.find_element(By.CSS_SELECTOR, "p.notice").text == "Job 'runnable' will run now."
        ),
        "the run-now notice",
    )
    Select(driver.find_element(By.ID, "auto-refresh")).select_by_value("5")
    # Only a reload by the page itself drops the notice (the daemon may have run
    # the job before the page came back the first time).
    browser.wait_for(
        lambda d: (
            _run_outcomes(d) == ["succeeded"] and not d.find_elements(By.CSS_SELECTOR, "p.notice")
        ),
        "the page to refresh itself and show the run",
        40,
    )
    assert "Hello, runnable!" in daemon.log()
    [run] = scheduler.get_runs(job_id="runnable")
    assert run.pid == daemon.pid
    # The refreshed page keeps the choice.
    assert Select(driver.find_element(By.ID, "auto-refresh")).first_selected_option.text == "5 s"
    browser.screenshot("dashboard-job", full_page=True)

    # The paused job never ran.
    assert list(scheduler.get_runs(job_id="pausable")) == []

    # On a phone, the Jobs page fits the screen's width.
    browser.phone()
    browser.open(app.url + "/pyncette/")
    width = driver.execute_script("return document.documentElement.scrollWidth")
    assert width <= 390
    phone = browser.screenshot("dashboard-phone", full_page=True)
    assert phone == tmp_path / "dashboard-phone.png"
    assert (tmp_path / "dashboard-jobs.png").stat().st_size > 0
    assert (tmp_path / "dashboard-job.png").stat().st_size > 0
