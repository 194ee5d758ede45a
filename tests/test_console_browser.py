"""The support console in a real headless browser: Debian's Chromium driven by Selenium through Debian's
chromedriver (nothing downloaded). An operator logs in, finds a player, grants with a reason and sees it in the
ledger, then replays a dead letter and sees its order applied.

The browser is blocking, so it runs in a thread while the service runs on the test's event loop. Without Chromium
the test fails, naming the packages (`tools/ensure_packages.sh chromium chromium-driver`, which `make test` runs).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from core.eventlog import decode_event
from server.app import Service
from server.consumer import ConsumerHooks, StreamEntry
from server.embedded import EmbeddedRedis
from tests.helpers.console import AGENT, AGENT_KEY, CONSOLE_KEYS, console_url
from tests.helpers.events import consumer_settings, dead_letters, event_log, order_event, store_of
from tests.helpers.services import PROJECT, base_settings
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
BROKEN_ORDER = "ord-dead-1"


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[WebDriver]:
    """A headless Chromium with a fresh profile; fails the test when Debian's packages are not installed."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            pytest.fail(
                f"{path} not found: install the Debian package {package} "
                "(tools/ensure_packages.sh chromium chromium-driver; `make test` does)"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=DriverService(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
async def failing_service(redis_server: EmbeddedRedis) -> AsyncIterator[tuple[Service, asyncio.Event]]:
    """A consuming service with the console, whose consumer fails one order while the returned event is set."""
    broken = asyncio.Event()
    broken.set()

    async def fail_while_broken(entry: StreamEntry) -> None:
        event = decode_event(entry.fields)
        if broken.is_set() and event.order.order_id == BROKEN_ORDER:
            raise RuntimeError("grant backend misconfigured")

    settings = base_settings(redis_url=redis_server.url, api_keys=CONSOLE_KEYS, **consumer_settings())
    service = Service(settings, consumer_hooks=ConsumerHooks(before_apply=fail_while_broken))
    await service.start()
    yield service, broken
    await service.stop(grace_s=0)


def text(driver: WebDriver) -> str:
    return str(driver.find_element(By.TAG_NAME, "body").text)


def shown(driver: WebDriver, css: str) -> WebElement:
    """The element `css` selects once the page that has it is loaded (a click's navigation goes through a
    redirect, and returns before it ends)."""
    element: WebElement = WebDriverWait(driver, 30).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
    )
    return element


def log_in_find_and_grant(driver: WebDriver, base: str) -> tuple[str, str]:
    """Logs in, finds player p-42, grants 7 gold with a reason; returns the ledger and the page shown after."""
    driver.get(base + "/")
    driver.find_element(By.ID, "api_key").send_keys(AGENT_KEY)
    driver.find_element(By.ID, "login").click()
    shown(driver, "#q")
    assert f"Project {PROJECT}" in text(driver)
    Select(driver.find_element(By.ID, "by")).select_by_value("player")
    driver.find_element(By.ID, "q").send_keys("p-42")
    driver.find_element(By.ID, "find").click()
    assert shown(driver, "#player-id").text == "p-42"
    driver.find_element(By.ID, "grant-sku").send_keys("gold")
    driver.find_element(By.ID, "grant-quantity").send_keys("7")
    driver.find_element(By.ID, "grant-reason").send_keys("ticket 5150: purchase not delivered")
    driver.find_element(By.ID, "grant").click()
    shown(driver, "p.ok")
    return str(driver.find_element(By.ID, "ledger").text), text(driver)


def replay_dead_letter(driver: WebDriver, base: str) -> str:
    """Opens the dead letters and replays the one listed; returns the page shown after."""
    driver.get(f"{base}/p/{PROJECT}/dead-letters")
    assert BROKEN_ORDER in shown(driver, "#dead-letters").text
    driver.find_element(By.CSS_SELECTOR, "button.replay").click()
    shown(driver, "p.ok")
    return text(driver)


def open_player(driver: WebDriver, base: str, user_id: str) -> tuple[str, str]:
    """The entitlements and ledger sections of a player's page."""
    driver.get(f"{base}/p/{PROJECT}/")
    driver.find_element(By.ID, "q").send_keys(user_id)
    driver.find_element(By.ID, "find").click()
    return shown(driver, "#entitlements").text, shown(driver, "#ledger").text


async def test_an_operator_grants_with_a_reason_and_replays_a_dead_letter(
    failing_service: tuple[Service, asyncio.Event], redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """In Chromium: log in, find a player, grant with a reason and see it in the ledger, replay a dead letter."""
    service, broken = failing_service
    await event_log(redis_client).append(order_event("paid", BROKEN_ORDER, "buyer-1", [("gold", 40)]), b"{}")

    async def dead_lettered() -> bool:
        return len(await dead_letters(redis_client)) == 1

    await eventually(dead_lettered, what="the failing order to be dead-lettered")
    base = console_url(service)
    with chromium(tmp_path / "profile") as driver:
        ledger, page = await asyncio.to_thread(log_in_find_and_grant, driver, base)
        assert "Granted gold: the player now holds 7." in page
        assert "ticket 5150: purchase not delivered" in ledger
        assert f"console:{AGENT}" in ledger
        record = await store_of(service).get(PROJECT, "p-42", "gold")
        assert record is not None
        assert record.quantity == 7

        broken.clear()  # the cause is fixed: the replay applies
        page = await asyncio.to_thread(replay_dead_letter, driver, base)
        assert "is back on its event stream" in page
        assert "No dead letters." in page

        async def applied() -> bool:
            held = await store_of(service).get(PROJECT, "buyer-1", "gold")
            return held is not None and held.quantity == 40

        await eventually(applied, what="the replayed order to be applied")
        entitlements, ledger = await asyncio.to_thread(open_player, driver, base, "buyer-1")
        assert "gold" in entitlements
        assert "40" in entitlements
        assert BROKEN_ORDER in ledger
