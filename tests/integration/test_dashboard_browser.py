"""The dashboard end to end: `controlplane dashboard` in a subprocess, driven by headless Chromium.

Needs Debian's `chromium` and `chromium-driver` and the selenium package. Where one is missing the
tests are skipped, and they fail when CI=true. Screenshots of every page go to results/screenshots/.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine, select

from controlplane.auth import hash_password
from controlplane.store.audit_models import AuditEntry
from controlplane.store.migrate import upgrade
from controlplane.store.models import Alert, FlaggedInteraction
from tests.unit.test_dashboard_pages import EMAIL, seed_store

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "results" / "screenshots"
PASSWORD = "browser test password"
WAIT_S = 60
PAGES = {
    "overview": "Overview", "drift": "Drift", "cost": "Cost", "safety": "Safety",
    "alerts": "Alerts", "flagged": "Flagged interactions", "jobs": "Jobs & models",
}
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--window-size=1400,2000",
)


def _missing(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: the browser test must run)")
    pytest.skip(message)


def _browser_paths() -> tuple[str, str]:
    try:
        import selenium  # noqa: F401
    except ImportError:
        _missing("selenium is not installed: pip install -e '.[test]'")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        _missing("Chromium or chromedriver is missing: apt-get install chromium chromium-driver")
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"controlplane dashboard exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the dashboard at {url} did not answer within {WAIT_S} s:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A seeded SQLite store and `controlplane dashboard` serving it on 127.0.0.1 with a password."""
    chromium, driver = _browser_paths()
    folder = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{folder / 'store.db'}"
    upgrade(url)
    ids = seed_store(url, datetime.now(timezone.utc))
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONTROLPLANE_")}
    env.update({
        "CONTROLPLANE_DATABASE_URL": url, "CONTROLPLANE_DASHBOARD_ADDRESS": "127.0.0.1",
        "CONTROLPLANE_DASHBOARD_PORT": str(port), "CONTROLPLANE_DASHBOARD_PASSWORD_HASH": hash_password(PASSWORD),
        "CONTROLPLANE_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    })
    script = Path(sys.executable).with_name("controlplane")
    command = [str(script), "dashboard"] if script.exists() else [sys.executable, "-m", "controlplane", "dashboard"]
    log = folder / "dashboard.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=folder)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, process, log)
        yield {"url": base, "store": url, "ids": ids, "chromium": chromium, "driver": driver, "folder": folder}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(dashboard: dict) -> Iterator:
    """Headless Chromium with a fresh profile and a download folder, logged in as operator "ada"."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = dashboard["chromium"]
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={dashboard['folder'] / 'profile'}"):
        options.add_argument(flag)
    downloads = dashboard["folder"] / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(dashboard["driver"]), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    try:
        _log_in(driver, dashboard["url"])
        yield driver
    finally:
        driver.quit()


# ----- helpers that drive Streamlit's DOM -----


def _wait(driver, condition, message: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S).until(condition)
    except TimeoutException:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / "failure.png"))
        pytest.fail(f"timed out after {WAIT_S} s waiting for {message}; the page is in {SCREENSHOTS / 'failure.png'}")


def _by_xpath(xpath: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as conditions

    return conditions.element_to_be_clickable((By.XPATH, xpath))


def _button(driver, label: str):
    return _wait(driver, _by_xpath(f"//button[.//p[normalize-space()='{label}']]"), f"the button {label!r}")


def _heading(driver, title: str) -> None:
    _wait(driver, _by_xpath(f"//h1[normalize-space()='{title}']"), f"the page title {title!r}")


def _page_text(driver) -> str:
    # textContent, not .text: Streamlit marks widget labels aria-hidden, which WebDriver's visible text leaves out.
    return driver.find_element("tag name", "body").get_attribute("textContent")


def _wait_for_text(driver, text: str) -> None:
    _wait(driver, lambda d: text in _page_text(d), f"the text {text!r}")


def _log_in(driver, url: str) -> None:
    driver.get(url)
    name = _wait(driver, _by_xpath("//input[@aria-label='Your name']"), "the login form")
    name.send_keys("ada")
    driver.find_element("xpath", "//input[@aria-label='Password']").send_keys(PASSWORD)
    _button(driver, "Log in").click()
    _heading(driver, "Overview")
    _settle(driver)


def _open(driver, title: str) -> None:
    # The default page's link points at the root URL, so links are found by their text.
    link = _wait(driver, _by_xpath(f"//a[@data-testid='stSidebarNavLink'][normalize-space()='{title}']"), f"the link to {title}")
    link.click()
    _heading(driver, title)
    _settle(driver)


def _settle(driver, quiet_s: float = 1.5) -> None:
    """Wait until the script run ends: the status widget ("Running…", "Stop") has been gone for `quiet_s` seconds."""
    # The heading appears before the rest of the page, and the status widget shows up only after a short delay.
    last_busy = [time.monotonic()]

    def quiet(d) -> bool:
        if d.find_elements("css selector", "[data-testid='stStatusWidget'], [data-stale='true']"):
            last_busy[0] = time.monotonic()
        return time.monotonic() - last_busy[0] >= quiet_s

    _wait(driver, quiet, "the page run to finish")


def _store_value(url: str, query):
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(query).scalar()
    finally:
        engine.dispose()


# ----- tests -----


def test_login_shows_overview(browser) -> None:
    assert "Signed in as ada (operator)" in _page_text(browser)
    metrics = {element.get_attribute("textContent") for element in browser.find_elements("css selector", "[data-testid='stMetricValue']")}
    assert {"4,800", "3.75%", "2"} <= metrics


def test_acknowledge_alert(browser, dashboard: dict) -> None:
    alert_id = dashboard["ids"]["alert_firing"]
    _open(browser, "Alerts")
    # The selectbox starts on the most recently seen alert, which seed_store makes the firing drift alert.
    _wait(browser, _by_xpath(f"//input[@aria-label='Alert' and @value='#{alert_id} firing — 2 of 3 features drifted']"),
          "the firing alert in the selectbox")
    _button(browser, "Acknowledge").click()
    _wait_for_text(browser, f"Alert {alert_id} acknowledged.")
    assert _store_value(dashboard["store"], select(Alert.status).where(Alert.id == alert_id)) == "acknowledged"
    assert _store_value(dashboard["store"], select(Alert.acknowledged_by).where(Alert.id == alert_id)) == "ada"


def test_label_flagged_interaction(browser, dashboard: dict) -> None:
    flagged_id = dashboard["ids"]["flagged_toxic"]
    _open(browser, "Flagged interactions")
    _wait_for_text(browser, "This code is awful")
    _wait(browser, _by_xpath("//label[@data-testid='stRadioOption'][.//p[normalize-space()='incorrect']]"), "the label radio").click()
    correction = browser.find_element("xpath", "//textarea")
    correction.send_keys("Reviewed, no bug found.")
    _button(browser, "Save label").click()
    _wait_for_text(browser, f"Interaction #{flagged_id} labelled incorrect.")
    where = FlaggedInteraction.id == flagged_id
    assert _store_value(dashboard["store"], select(FlaggedInteraction.label).where(where)) == "incorrect"
    assert _store_value(dashboard["store"], select(FlaggedInteraction.correction).where(where)) == "Reviewed, no bug found."


def test_export_download(browser, dashboard: dict) -> None:
    _open(browser, "Flagged interactions")
    _wait(browser, _by_xpath("//label[@data-testid='stRadioOption'][.//p[contains(., 'rows matching the filters')]]"), "the scope radio").click()
    _button(browser, "Prepare export").click()
    download = _wait(browser, _by_xpath("//div[@data-testid='stDownloadButton']//button"), "the download button")
    download.click()
    files = _wait(browser, lambda d: [p for p in d.downloads.glob("*.jsonl")] or None, "the downloaded file")
    _wait(browser, lambda d: not list(d.downloads.glob("*.crdownload")), "the download to finish")
    content = files[0].read_text(encoding="utf-8")
    prompts = {line["metadata"]["event_id"]: line["messages"][0]["content"] for line in map(json.loads, content.splitlines())}
    assert prompts == {"event-pii": "Please email <EMAIL_ADDRESS> the report.", "event-toxic": "Review my code"}
    assert EMAIL not in content
    assert _store_value(dashboard["store"], select(AuditEntry.actor).where(AuditEntry.action == "flagged.export")) == "ada"


def test_screenshot_every_page(browser) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for path, title in PAGES.items():
        _open(browser, title)
        target = SCREENSHOTS / f"{path}.png"
        assert browser.save_screenshot(str(target)), f"no screenshot of {title}"
        assert target.stat().st_size > 10_000
        assert "Traceback" not in _page_text(browser)
