"""The support console over HTTP, on the real service and its Redis: login and sessions, CSRF, scopes, grant and
revoke through the RPCs' paths (validated, idempotent, on the ledger with the operator's name), finding a player by
order id, dead letters, and escaping of whatever callers sent."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from markupsafe import escape

from core.connections import reply_text
from core.keys import EventKeys
from entitlements import PermissionDeniedError
from server.__main__ import main
from server.app import Service
from server.auth import parse_api_keys
from server.config import ConsoleSettings, Settings
from server.console.sessions import Sessions
from server.embedded import EmbeddedRedis
from server.errors import ConfigError
from tests.helpers.console import (
    AGENT,
    AGENT_KEY,
    VIEWER_KEY,
    console_browser,
    console_service,
    hidden,
)
from tests.helpers.events import event_log, order_event, store_of
from tests.helpers.services import PROJECT, WRITER_KEY, ClientFactory, ServiceFactory, store_changes
from tests.helpers.waiting import eventually


@pytest.fixture
async def console(service_factory: ServiceFactory, redis_server: EmbeddedRedis) -> Service:
    """A consuming service with the console on a free port."""
    return await console_service(service_factory, redis_server.url)


async def held(service: Service, user_id: str, sku: str) -> int:
    record = await store_of(service).get(PROJECT, user_id, sku)
    return 0 if record is None else record.quantity


async def test_login_needs_a_known_key_with_the_console_scope(console: Service) -> None:
    """A wrong key is 401 and a key without the console scope 403, neither opens a session; a console key does."""
    async with console_browser(console) as browser:
        status, page = await browser.login("not-a-key")
        assert status == 401
        assert "Unknown API key" in page
        status, page = await browser.login(WRITER_KEY)
        assert status == 403
        assert "no console scope" in page
        status, page = await browser.get(f"/p/{PROJECT}/")
        assert status == 200
        assert 'name="api_key"' in page  # still the login form
        status, page = await browser.login(AGENT_KEY)
        assert status == 200
        assert f"Project {PROJECT}" in page
        assert AGENT in page
        cookie = next(c for c in browser.http.cookie_jar if c.key == "console_session")
        assert cookie["httponly"]
        assert cookie["samesite"] == "Strict"


async def test_failed_logins_are_limited_per_address(
    service_factory: ServiceFactory, redis_server: EmbeddedRedis
) -> None:
    """Past the failures allowed per minute, even the right key is refused with 429 and Retry-After."""
    service = await console_service(
        service_factory, redis_server.url, console=ConsoleSettings(port=0, login_failures_per_minute=3)
    )
    async with console_browser(service) as browser:
        for _ in range(3):
            assert (await browser.login("guess"))[0] == 401
        _, page = await browser.get("/login")
        async with browser.http.post(
            browser.base + "/login", data={"api_key": AGENT_KEY, "login_token": hidden(page, "login_token")}
        ) as response:
            assert response.status == 429
            assert int(response.headers["Retry-After"]) > 0


async def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(
    console: Service, redis_client: aioredis.Redis
) -> None:
    """A grant without the session's CSRF token, or with another one, is 403 and writes nothing."""
    async with console_browser(console) as browser:
        await browser.login(AGENT_KEY)
        form = await browser.grant_form(PROJECT, "p1", sku="gold", quantity="5", reason="goodwill")
        before = await store_changes(redis_client)
        missing = {k: v for k, v in form.items() if k != "csrf"}
        assert (await browser.post(f"/p/{PROJECT}/player/grant", missing))[0] == 403
        assert (await browser.post(f"/p/{PROJECT}/player/grant", form | {"csrf": "forged"}))[0] == 403
        assert await store_changes(redis_client) == before
        assert await held(console, "p1", "gold") == 0


async def test_a_read_only_console_key_sees_but_cannot_grant(console: Service) -> None:
    """A key with the console scope alone sees the player but gets no grant form, and a grant sent anyway is 403."""
    async with console_browser(console) as agent, console_browser(console) as viewer:
        await agent.login(AGENT_KEY)
        form = await agent.grant_form(PROJECT, "p1", sku="gold", quantity="5", reason="goodwill")
        await viewer.login(VIEWER_KEY)
        page = await viewer.player_page(PROJECT, "p1")
        assert "grant-form" not in page
        assert "(read only)" in page
        form["csrf"] = hidden(page, "csrf")
        status, page = await viewer.post(f"/p/{PROJECT}/player/grant", form)
        assert status == 403
        assert "no write scope" in page
        assert await held(console, "p1", "gold") == 0


async def test_a_grant_is_on_the_ledger_with_the_operator_and_reason(console: Service) -> None:
    """A grant applies through the store, recorded as console:<key name> with the reason, shown in the ledger."""
    async with console_browser(console) as browser:
        await browser.login(AGENT_KEY)
        form = await browser.grant_form(PROJECT, "p1", sku="gold", quantity="5", reason="ticket 4411: lost purchase")
        status, page = await browser.post(f"/p/{PROJECT}/player/grant", form)
        assert status == 200
        assert "Granted gold: the player now holds 5." in page
        assert await held(console, "p1", "gold") == 5
        (entry,) = await store_of(console).ledger(PROJECT, "p1")
        assert entry.fields["actor"] == f"console:{AGENT}"
        assert entry.fields["reason"] == "ticket 4411: lost purchase"
        assert entry.fields["idempotency_key"] == form["idempotency_key"]
        ledger = page[page.index('id="ledger"') :]
        assert f"console:{AGENT}" in ledger
        assert "ticket 4411: lost purchase" in ledger
        assert "gold" in ledger


async def test_a_form_sent_twice_grants_once(console: Service) -> None:
    """The same grant form sent twice (a double click) replays the first: granted once, one ledger entry."""
    async with console_browser(console) as browser:
        await browser.login(AGENT_KEY)
        form = await browser.grant_form(PROJECT, "p1", sku="gold", quantity="5", reason="goodwill")
        assert (await browser.post(f"/p/{PROJECT}/player/grant", form))[0] == 200
        status, page = await browser.post(f"/p/{PROJECT}/player/grant", form)
        assert status == 200
        assert "had been applied already" in page
        assert await held(console, "p1", "gold") == 5
        assert len(await store_of(console).ledger(PROJECT, "p1")) == 1


async def test_refused_grants_show_the_rpc_message_and_write_nothing(
    console: Service, redis_client: aioredis.Redis
) -> None:
    """No reason, a bad quantity, a permanent item twice over: 400/409 with the message, nothing written."""
    async with console_browser(console) as browser:
        await browser.login(AGENT_KEY)
        before = await store_changes(redis_client)
        form = await browser.grant_form(PROJECT, "p1", sku="gold", quantity="5", reason="  ")
        status, page = await browser.post(f"/p/{PROJECT}/player/grant", form)
        assert status == 400
        assert "reason: is required" in page
        form = await browser.grant_form(PROJECT, "p1", sku="gold", quantity="-3", reason="x")
        status, page = await browser.post(f"/p/{PROJECT}/player/grant", form)
        assert status == 400
        assert "quantity: must be a positive whole number" in page
        form = await browser.grant_form(PROJECT, "p1", sku="castle", kind="permanent", quantity="2", reason="x")
        status, page = await browser.post(f"/p/{PROJECT}/player/grant", form)
        assert status == 400
        assert "quantity: must be 1 for permanent items" in page
        # The form comes back as sent, with the same key: fixed and sent again, it applies once.
        assert hidden(page, "idempotency_key", "grant-form") == form["idempotency_key"]
        assert await store_changes(redis_client) == before
        form = await browser.grant_form(PROJECT, "p1", sku="gold", quantity="1", kind="permanent", reason="x")
        assert (await browser.post(f"/p/{PROJECT}/player/grant", form))[0] == 200
        form = await browser.grant_form(PROJECT, "p1", sku="gold", quantity="1", kind="consumable", reason="x")
        status, page = await browser.post(f"/p/{PROJECT}/player/grant", form)
        assert status == 409
        assert "gold" in page


async def test_revoke_with_a_reason(console: Service) -> None:
    """A revoke takes the item away, on the ledger with the operator and its reason."""
    async with console_browser(console) as browser:
        await browser.login(AGENT_KEY)
        form = await browser.grant_form(PROJECT, "p1", sku="gold", quantity="5", reason="goodwill")
        await browser.post(f"/p/{PROJECT}/player/grant", form)
        page = await browser.player_page(PROJECT, "p1")
        revoke = {
            "csrf": hidden(page, "csrf", "revoke-form"),
            "user_id": "p1",
            "idempotency_key": hidden(page, "idempotency_key", "revoke-form"),
            "action": "revoke",
            "sku": "gold",
            "reason": "chargeback 991",
        }
        status, page = await browser.post(f"/p/{PROJECT}/player/revoke", revoke)
        assert status == 200
        assert "Revoked gold (the player held 5)." in page
        assert await held(console, "p1", "gold") == 0
        newest = (await store_of(console).ledger(PROJECT, "p1"))[0]
        assert (newest.fields["op"], newest.fields["actor"], newest.fields["reason"]) == (
            "revoke",
            f"console:{AGENT}",
            "chargeback 991",
        )


async def test_find_a_player_by_order_id(console: Service, redis_client: aioredis.Redis) -> None:
    """An order id leads to its player's page, with the order, its status timeline and where it came from."""
    await event_log(redis_client).append(order_event("paid", "ord-77", "buyer-9", [("gold", 25)]), b"{}")

    async def applied() -> bool:
        return await held(console, "buyer-9", "gold") == 25

    await eventually(applied, what="the order to be applied")
    async with console_browser(console) as browser:
        await browser.login(AGENT_KEY)
        status, page = await browser.get(f"/p/{PROJECT}/find", by="order", q="ord-77")
        assert status == 200
        assert 'id="player-id">buyer-9<' in page
        orders = page[page.index('id="orders"') : page.index('id="subscriptions"')]
        assert "ord-77" in orders
        assert "paid</strong> from the webhook, granted" in orders
        assert "gold x25" in orders
        status, page = await browser.get(f"/p/{PROJECT}/find", by="order", q="no-such-order")
        assert status == 404
        assert "no order with this id is known" in page


async def test_dead_letters_are_listed_and_discarded(console: Service, redis_client: aioredis.Redis) -> None:
    """A dead letter is listed; discarding it removes it; a second discard says it is gone."""
    dead = EventKeys(PROJECT, 0).dead_letters
    entry_id = reply_text(await redis_client.xadd(dead, {"type": "EVENT_TYPE_ORDER_PAID", "error": "boom"}))
    async with console_browser(console) as browser:
        await browser.login(AGENT_KEY)
        status, page = await browser.get(f"/p/{PROJECT}/dead-letters")
        assert status == 200
        assert entry_id in page
        assert "boom" in page
        csrf = hidden(page, "csrf")
        status, page = await browser.post(f"/p/{PROJECT}/dead-letters/{entry_id}/discard", {"csrf": csrf})
        assert status == 200
        assert "discarded" in page
        assert "No dead letters." in page
        status, page = await browser.post(f"/p/{PROJECT}/dead-letters/{entry_id}/discard", {"csrf": csrf})
        assert "replayed or discarded already" in page


async def test_what_callers_sent_is_escaped(console: Service) -> None:
    """A hostile player id, sku and reason are shown as text, never as markup."""
    player, sku, reason = "<script>alert(1)</script>", "<img src=x onerror=alert(2)>", '"><b>bold</b>'
    async with console_browser(console) as browser:
        await browser.login(AGENT_KEY)
        form = await browser.grant_form(PROJECT, player, sku=sku, quantity="1", reason=reason)
        status, page = await browser.post(f"/p/{PROJECT}/player/grant", form)
        assert status == 200
        for hostile in (player, sku, reason):
            assert hostile not in page
            assert str(escape(hostile)) in page
        assert "<script" not in page
        assert "<img" not in page
        assert "<b>" not in page


async def test_pages_carry_the_security_headers(console: Service) -> None:
    """Every page forbids framing and other origins' resources, and pages with data are never cached."""
    async with console_browser(console) as browser:
        await browser.login(AGENT_KEY)
        for path in ("/login", f"/p/{PROJECT}/player?id=p1", "/p/999/"):
            async with browser.http.get(browser.base + path) as response:
                assert response.headers["X-Frame-Options"] == "DENY"
                assert "default-src 'self'" in response.headers["Content-Security-Policy"]
                assert response.headers["Cache-Control"] == "no-store"


async def test_a_project_not_served_or_not_the_keys_is_refused(console: Service) -> None:
    """Another project's pages are 400 (not served), and a malformed project id is refused the same way."""
    async with console_browser(console) as browser:
        await browser.login(AGENT_KEY)
        status, page = await browser.get("/p/999/")
        assert status == 400
        assert "999 is not a project this service serves" in page
        assert (await browser.get("/p/abc/"))[0] == 400


async def test_logout_ends_the_session(console: Service) -> None:
    """After logout the session's cookie opens nothing and its forms are refused."""
    async with console_browser(console) as browser:
        await browser.login(AGENT_KEY)
        form = await browser.grant_form(PROJECT, "p1", sku="gold", quantity="1", reason="x")
        status, page = await browser.post("/logout", {"csrf": form["csrf"]})
        assert status == 200
        assert 'name="api_key"' in page
        status, page = await browser.post(f"/p/{PROJECT}/player/grant", form)
        assert status == 403
        assert "Not logged in" in page
        assert await held(console, "p1", "gold") == 0


async def test_a_console_only_key_calls_no_rpc(console: Service, client_factory: ClientFactory) -> None:
    """The console scope alone reads nothing and writes nothing over gRPC."""
    viewer = await client_factory(console, api_key=VIEWER_KEY)
    with pytest.raises(PermissionDeniedError, match="lacks the 'read' scope"):
        await viewer.check_entitlement("p1", "gold")
    with pytest.raises(PermissionDeniedError, match="lacks the 'write' scope"):
        await viewer.grant("p1", "gold")


def test_hash_key_makes_console_keys(capsys: pytest.CaptureFixture[str]) -> None:
    """`hash-key --scopes console,write` prints an entry the service accepts, with both scopes."""
    assert main(["hash-key", "--name", "support-dana", "--scopes", "console,write"]) == 0
    entry = capsys.readouterr().out.split("ENTITLEMENTS_API_KEYS entry: ")[1].strip()
    (key,) = parse_api_keys(entry)
    assert key.name == "support-dana"
    assert key.scopes == {"console", "write"}


def test_console_settings_from_the_environment() -> None:
    """The console's variables are read with their defaults, and a bad port stops the start."""
    defaults = Settings.from_env({}).console
    assert (defaults.enabled, defaults.host, defaults.port, defaults.secure_cookie) == (True, "127.0.0.1", 9470, False)
    settings = Settings.from_env(
        {
            "ENTITLEMENTS_CONSOLE_ENABLED": "false",
            "ENTITLEMENTS_CONSOLE_HOST": "10.1.2.3",
            "ENTITLEMENTS_CONSOLE_PORT": "8443",
            "ENTITLEMENTS_CONSOLE_SESSION_IDLE_S": "600",
            "ENTITLEMENTS_CONSOLE_SECURE_COOKIE": "1",
            "ENTITLEMENTS_CONSOLE_LOGIN_FAILURES_PER_MINUTE": "5",
        }
    ).console
    assert settings == ConsoleSettings(False, "10.1.2.3", 8443, 600.0, True, 5)
    with pytest.raises(ConfigError, match="ENTITLEMENTS_CONSOLE_PORT"):
        Settings.from_env({"ENTITLEMENTS_CONSOLE_PORT": "70000"})


async def test_a_console_turned_off_is_not_served(service_factory: ServiceFactory, redis_server: EmbeddedRedis) -> None:
    """With the console off the service starts without it and reports no console port."""
    service = await console_service(service_factory, redis_server.url, console=ConsoleSettings(enabled=False))
    assert service.endpoints is not None
    assert service.endpoints.console_port is None


async def test_an_idle_session_expires(service_factory: ServiceFactory, redis_server: EmbeddedRedis) -> None:
    """A session unused for longer than the idle timeout is gone: its pages lead back to the login form."""
    service = await console_service(service_factory, redis_server.url, console=ConsoleSettings(port=0))
    assert service.console is not None
    now = [0.0]
    service.console.parts.sessions = Sessions(60.0, clock=lambda: now[0])
    async with console_browser(service) as browser:
        assert (await browser.login(AGENT_KEY))[0] == 200
        now[0] = 59.0
        assert f"Project {PROJECT}" in (await browser.get(f"/p/{PROJECT}/"))[1]
        now[0] = 120.0
        assert 'name="api_key"' in (await browser.get(f"/p/{PROJECT}/"))[1]


async def test_redis_down_is_a_503_that_changes_nothing(console: Service, embedded_server: EmbeddedRedis) -> None:
    """With Redis down, a page and a grant are 503 with a message to try again, never a traceback."""
    async with console_browser(console) as browser:
        await browser.login(AGENT_KEY)
        form = await browser.grant_form(PROJECT, "p1", sku="gold", quantity="1", reason="x")
        await embedded_server.stop()
        status, page = await browser.get(f"/p/{PROJECT}/player", id="p1")
        assert status == 503
        assert "The store is unavailable" in page
        status, page = await browser.post(f"/p/{PROJECT}/player/grant", form)
        assert status == 503
        assert "Traceback" not in page


async def test_a_time_limited_grant_takes_the_catalogs_period(console: Service) -> None:
    """A grant of a time-limited sku without a duration takes the catalog's period, as Grant does."""
    async with console_browser(console) as browser:
        await browser.login(AGENT_KEY)
        form = await browser.grant_form(PROJECT, "p1", sku="vip_pass", reason="make-good for the outage")
        status, page = await browser.post(f"/p/{PROJECT}/player/grant", form)
        assert status == 200
        assert "Granted vip_pass: active until" in page
        record = await store_of(console).get(PROJECT, "p1", "vip_pass")
        assert record is not None
        assert record.period_ms == 30 * 86_400_000
        form = await browser.grant_form(PROJECT, "p1", sku="unknown_pass", kind="time-limited", reason="x")
        status, page = await browser.post(f"/p/{PROJECT}/player/grant", form)
        assert status == 400
        assert "duration: is required for time-limited items the catalog does not know" in page
