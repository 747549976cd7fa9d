"""The page at ``/`` in a real browser (headless Chromium driven by selenium) against the
real llama-server on the demo model: the models list, a streamed chat, Stop, a live load.

Marked ``browser``: skipped where no Chromium and chromedriver are installed, unless
``BODHI_REQUIRE_BROWSER=1`` (CI sets it, after installing them), which turns the skip into
a failure. Screenshots go to ``.pytest_cache/screenshots/`` (one per test, at its end).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import trio

from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._demo import DEMO_ALIAS, DEMO_FILENAME, DEMO_REPO
from httpserver import running_server

pytestmark = [pytest.mark.browser, pytest.mark.llama]

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / ".pytest_cache" / "screenshots"
SECOND = "demo:endless"  # a second alias on the demo model: it never stops by itself
T = TypeVar("T")


def _browser_binaries() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    found = _browser_binaries()
    if found is None:
        message = "headless Chromium and chromedriver are not installed"
        if os.environ.get("BODHI_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{message} (BODHI_REQUIRE_BROWSER=1)")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = found
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,800")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(chromedriver, popen_kw={"start_new_session": True})  # its own group
    chrome = webdriver.Chrome(options=options, service=service)
    chrome.set_page_load_timeout(30)
    try:
        yield chrome
    finally:
        # quit() asks the browser; one that hangs would hang the suite: bounded, then
        # chromedriver's process group is killed (the browser is its child).
        quitter = threading.Thread(target=chrome.quit, daemon=True)
        quitter.start()
        quitter.join(15)
        if quitter.is_alive() and service.process is not None:
            os.killpg(service.process.pid, signal.SIGKILL)


@asynccontextmanager
async def page_server(tmp_path: Path, hub_cache: Path) -> AsyncIterator[str]:
    endless = ("--ctx-size 256 --context-shift --parallel 1 --ignore-eos",)
    second = Alias(SECOND, DEMO_REPO, DEMO_FILENAME, context_params=endless)
    async with running_server(tmp_path / "home", hub_cache, aliases=(second,)) as server:
        yield server.url


async def in_thread(fn: Callable[[], T]) -> T:
    """A blocking selenium call, off the event loop (the server runs on it). Abandoned on
    cancellation, so a browser that stopped answering fails the test at its deadline
    instead of holding it (the fixture then ends that browser)."""
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


def wait_for(chrome: Any, condition: Callable[[Any], Any], timeout: float = 20) -> Any:
    """Selenium's bounded wait for ``condition`` (a poll of the page, never a sleep)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The page re-renders rows on every state change: an element read mid-render is stale.
    ignored = (StaleElementReferenceException,)
    return WebDriverWait(chrome, timeout, 0.05, ignored_exceptions=ignored).until(condition)


def row_state(chrome: Any, alias: str) -> str | None:
    from selenium.webdriver.common.by import By

    rows = chrome.find_elements(By.CSS_SELECTOR, f'#models tbody tr[data-alias="{alias}"]')
    return rows[0].get_attribute("data-state") if rows else None


def screenshot(chrome: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    chrome.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


async def state_of(url: str, alias: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        doc = (await client.get("/bodhi/v1/state")).json()
    return next((m for m in doc["models"] if m["alias"] == alias), {"in_flight": 0})


def console_errors(chrome: Any) -> list[str]:
    return [e["message"] for e in chrome.get_log("browser") if e["level"] == "SEVERE"]


async def test_the_page_lists_the_models_and_streams_a_chat(
    driver: Any, tmp_path: Path, hub_cache: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    with trio.fail_after(90):
        async with page_server(tmp_path, hub_cache) as url:
            await in_thread(lambda: driver.get(url + "/"))
            await in_thread(lambda: wait_for(driver, lambda d: row_state(d, DEMO_ALIAS)))
            badge = await in_thread(lambda: driver.find_element(By.ID, "connection").text)
            assert badge in ("live", "connecting…")

            def send() -> None:
                Select(driver.find_element(By.ID, "chat-model")).select_by_value(DEMO_ALIAS)
                driver.find_element(By.ID, "chat-input").send_keys("Hello there")
                driver.find_element(By.ID, "chat-max-tokens").clear()
                driver.find_element(By.ID, "chat-max-tokens").send_keys("16")
                driver.find_element(By.ID, "chat-send").click()

            await in_thread(send)
            status = await in_thread(
                lambda: wait_for(
                    driver,
                    lambda d: (
                        (t := d.find_element(By.ID, "chat-status").text).startswith("done") and t
                    ),
                )
            )
            reply = await in_thread(
                lambda: driver.find_element(By.CSS_SELECTOR, "#chat-log .msg.assistant").text
            )
            assert reply, "no text streamed"  # (the "model: " label is CSS, not text)
            assert "tokens" in status
            await in_thread(lambda: wait_for(driver, lambda d: row_state(d, DEMO_ALIAS) == "ready"))
            # no event says a response ended: the page looks again while one is in flight
            selector = f'tr[data-alias="{DEMO_ALIAS}"] .in-flight'
            await in_thread(
                lambda: wait_for(
                    driver, lambda d: d.find_element(By.CSS_SELECTOR, selector).text == "0"
                )
            )
            await in_thread(lambda: screenshot(driver, "chat"))
            assert await in_thread(lambda: console_errors(driver)) == []


async def test_stop_ends_the_generation(driver: Any, tmp_path: Path, hub_cache: Path) -> None:
    """An endless generation (with a request field from "More request fields"), stopped
    from the page: the fetch is aborted, the connection
    closes, and the model's ``in_flight`` goes back to 0."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    with trio.fail_after(90):
        async with page_server(tmp_path, hub_cache) as url:
            await in_thread(lambda: driver.get(url + "/"))
            await in_thread(lambda: wait_for(driver, lambda d: row_state(d, DEMO_ALIAS)))

            await in_thread(lambda: wait_for(driver, lambda d: row_state(d, SECOND)))

            def prepare_long() -> None:
                Select(driver.find_element(By.ID, "chat-model")).select_by_value(SECOND)
                driver.find_element(By.CSS_SELECTOR, "details summary").click()
                extra = driver.find_element(By.ID, "chat-extra")
                extra.send_keys(json.dumps({"temperature": 0.5}))
                driver.find_element(By.ID, "chat-max-tokens").clear()
                driver.find_element(By.ID, "chat-max-tokens").send_keys("1000000")
                driver.find_element(By.ID, "chat-input").send_keys("Tell me everything")

            await in_thread(prepare_long)
            stop_at = await in_thread(lambda: driver.find_element(By.ID, "chat-stop").rect)
            await in_thread(lambda: driver.find_element(By.ID, "chat-send").click())
            await in_thread(
                lambda: wait_for(
                    driver, lambda d: d.find_element(By.ID, "chat-status").text.endswith("tokens")
                )
            )
            # The answer outgrows the log; the Stop button must stay where it was (a button
            # that moves while text streams in catches the click on the text instead).
            await in_thread(
                lambda: wait_for(
                    driver,
                    lambda d: d.execute_script(
                        "const log = document.getElementById('chat-log');"
                        "return log.scrollHeight > log.clientHeight;"
                    ),
                )
            )
            assert await in_thread(lambda: driver.find_element(By.ID, "chat-stop").rect) == stop_at
            assert (await state_of(url, SECOND))["in_flight"] == 1
            await in_thread(lambda: driver.find_element(By.ID, "chat-stop").click())
            status = await in_thread(
                lambda: wait_for(
                    driver,
                    lambda d: (
                        (t := d.find_element(By.ID, "chat-status").text).startswith("stopped") and t
                    ),
                )
            )
            assert "stopped after" in status
            while True:  # polled state (only pollable over HTTP), bounded by fail_after
                if (await state_of(url, SECOND))["in_flight"] == 0:
                    break
                await trio.sleep(0.05)
            await in_thread(lambda: screenshot(driver, "stopped"))


async def test_a_load_shows_up_live(driver: Any, tmp_path: Path, hub_cache: Path) -> None:
    """A model loaded through the API (not the page) appears as ready without a reload."""
    with trio.fail_after(90):
        async with page_server(tmp_path, hub_cache) as url:
            await in_thread(lambda: driver.get(url + "/"))
            await in_thread(lambda: wait_for(driver, lambda d: row_state(d, SECOND) == "stopped"))
            await in_thread(
                lambda: wait_for(
                    driver, lambda d: d.find_element("id", "connection").text == "live"
                )
            )
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                response = await client.post("/bodhi/v1/server/load", json={"alias": SECOND})
            assert response.status_code == 200
            await in_thread(lambda: wait_for(driver, lambda d: row_state(d, SECOND) == "ready"))
            await in_thread(lambda: screenshot(driver, "models"))


async def test_the_page_fits_a_phone(driver: Any, tmp_path: Path, hub_cache: Path) -> None:
    """At a phone's width nothing needs a horizontal scroll of the whole page."""
    with trio.fail_after(60):
        async with page_server(tmp_path, hub_cache) as url:
            await in_thread(lambda: driver.set_window_size(390, 844))
            try:
                await in_thread(lambda: driver.get(url + "/"))
                await in_thread(lambda: wait_for(driver, lambda d: row_state(d, DEMO_ALIAS)))
                widths = await in_thread(
                    lambda: driver.execute_script(
                        "return [document.documentElement.scrollWidth, window.innerWidth]"
                    )
                )
                await in_thread(lambda: screenshot(driver, "phone"))
            finally:
                await in_thread(lambda: driver.set_window_size(1280, 800))
            assert widths[0] <= widths[1], widths
