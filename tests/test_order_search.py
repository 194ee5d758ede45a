"""Xsolla's admin order search read by `XsollaOrderSearch` (the simulator's over real sockets, or a crafted answer
on a local server): paging, the date range and its edges, every field, `user.id` absent and present, sandbox,
bundles, refusals, rate limits, server errors and unreadable orders; the simulator's search itself (422, its rate
limiter); and Get order with its items (`XsollaOrders.order`)."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import MappingProxyType
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from core.errors import ConfigError
from core.order_sources import OrderUnknown, Player, ReportedStatus, TokenRefused
from core.projects import Project
from core.reconciliation import (
    BUNDLE,
    ProviderOrder,
    ProviderOrderItem,
    SearchRateLimited,
    SearchRefused,
    SearchUnavailable,
)
from entitlements.v1 import entitlements_pb2 as pb
from providers.xsolla import CatalogSettings, XsollaOrders, XsollaOrderSearch, order_search
from providers.xsolla.metrics import XsollaMetrics
from providers.xsolla.order_search import iso_second
from xsolla_simulator import OrderSearchApi, XsollaSimulator
from xsolla_simulator.admin_api import AdminAuth
from xsolla_simulator.orders import OrderBook
from xsolla_simulator.testing import running_simulator

PROJECT = 308077
OTHER = 308078
API_KEY = "admin-api-key-0123456789"
PLAYER = "player-1"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR_MS = 3_600_000


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def project(project_id: int = PROJECT, **provider: object) -> Project:
    """A project whose admin API opens with API_KEY (or the table given)."""
    return Project(project_id, provider=MappingProxyType(provider or {"api_key": API_KEY}))


@pytest.fixture
async def sim() -> AsyncIterator[XsollaSimulator]:
    """The simulator serving PROJECT and OTHER, both opened by API_KEY; no webhook URL."""
    async with running_simulator(project_id=PROJECT) as simulator:
        simulator.add_project(OTHER)
        simulator.admin_auth.set_api_key(PROJECT, API_KEY)
        simulator.admin_auth.set_api_key(OTHER, API_KEY)
        yield simulator


@pytest.fixture
def registry() -> CollectorRegistry:
    """A registry of the search's metrics."""
    return CollectorRegistry()


@pytest.fixture
async def searcher_for(registry: CollectorRegistry) -> AsyncIterator[Callable[[str], XsollaOrderSearch]]:
    """Makes order searches against an admin API base URL; closes them at the end."""
    made: list[XsollaOrderSearch] = []

    def make(base_url: str) -> XsollaOrderSearch:
        made.append(order_search(CatalogSettings(admin_api=base_url, http_timeout_s=5.0), registry))
        return made[-1]

    yield make
    for searcher in made:
        await searcher.close()


@pytest.fixture
def search(sim: XsollaSimulator, searcher_for: Callable[[str], XsollaOrderSearch]) -> XsollaOrderSearch:
    """The order search pointed at the simulator."""
    return searcher_for(sim.store_api_url)


@contextlib.asynccontextmanager
async def crafted(answer: Callable[[dict[str, Any]], web.Response]) -> AsyncIterator[str]:
    """A local admin API whose order search answers `answer(request body)`; yields its base URL."""

    async def handle(request: web.Request) -> web.Response:
        return answer(await request.json())

    app = web.Application()
    app.router.add_post("/v3/project/{project_id}/admin/order/search", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def paid_order(sim: XsollaSimulator, **kwargs: Any) -> int:
    """A paid order of PLAYER (or `user_id=`), created as `kwargs` say; returns its id."""
    kwargs.setdefault("items", [{"sku": "gold", "quantity": 100, "type": "virtual_currency", "price": "0.05"}])
    order = sim.create_order(kwargs.pop("user_id", PLAYER), **kwargs)
    await sim.set_status(order.order_id, "paid")
    return order.order_id


def requests(registry: CollectorRegistry, result: str) -> float:
    labels = {"operation": "order_search", "result": result}
    return registry.get_sample_value("entitlements_xsolla_requests_total", labels) or 0.0


# --- paging and the date range --------------------------------------------------------------------------------


async def test_25_orders_come_in_3_pages_oldest_first(sim: XsollaSimulator, search: XsollaOrderSearch) -> None:
    """25 orders read 10 at a time: pages of 10, 10 and 5, oldest first, has_more until the last, total 25."""
    # created newest first: the answer is by creation date, not by id
    ids = [await paid_order(sim, created_at=T0 + timedelta(minutes=n)) for n in reversed(range(25))][::-1]
    await paid_order(sim, created_at=T0, project_id=OTHER)  # another project's: never in PROJECT's pages

    pages = [
        await search.search(project(), ms(T0), ms(T0) + HOUR_MS, offset=offset, limit=10) for offset in (0, 10, 20)
    ]

    assert [len(page.orders) for page in pages] == [10, 10, 5]
    assert [page.has_more for page in pages] == [True, True, False]
    assert {page.total for page in pages} == {25}
    assert [order.order_id for page in pages for order in page.orders] == [str(i) for i in ids]
    assert [(call.offset, call.limit, call.status) for call in sim.order_search.calls_for(PROJECT)] == [
        (0, 10, 200),
        (10, 10, 200),
        (20, 10, 200),
    ]


async def test_only_orders_in_the_range_come_back_with_both_edges_included(
    sim: XsollaSimulator, search: XsollaOrderSearch
) -> None:
    """Orders created well before `from` or after `until` are left out; those just inside either edge are in,
    because the range goes out to the second rounded outwards (the simulator compares exact creation times)."""
    before = await paid_order(sim, created_at=T0 - timedelta(milliseconds=500))
    at_from = await paid_order(sim, created_at=T0 + timedelta(milliseconds=900))
    inside = await paid_order(sim, created_at=T0 + timedelta(minutes=30))
    at_until = await paid_order(sim, created_at=T0 + timedelta(hours=1, milliseconds=100))
    after = await paid_order(sim, created_at=T0 + timedelta(hours=1, milliseconds=1500))

    # from and until in the middle of their seconds: sent as 12:00:00 and 13:00:01
    page = await search.search(project(), ms(T0) + 700, ms(T0) + HOUR_MS + 500, offset=0, limit=10)

    assert [order.order_id for order in page.orders] == [str(at_from), str(inside), str(at_until)]
    assert not {str(before), str(after)} & {order.order_id for order in page.orders}
    assert (page.total, page.has_more) == (3, False)


# --- what an order says -----------------------------------------------------------------------------------------


async def test_every_field_of_an_order_is_mapped(sim: XsollaSimulator, search: XsollaOrderSearch) -> None:
    """Id, status, creation time, mode, lines (sku, quantity, type, unit price, free), total and invoice are read;
    the player is "" as the published spec leaves `user.id` out."""
    order = sim.create_order(
        PLAYER,
        items=[
            {"sku": "gold", "quantity": 100, "type": "virtual_currency", "price": "0.05"},
            {"sku": "starter_pack", "quantity": 2, "type": "bundle", "price": "4.99"},
            {"sku": "welcome_gift", "quantity": 1, "type": "virtual_good", "is_free": True},
        ],
        currency="EUR",
        created_at=T0,
    )
    await sim.set_status(order.order_id, "paid")

    (found,) = (await search.search(project(), ms(T0), ms(T0), offset=0, limit=1)).orders

    assert found == ProviderOrder(
        project_id=PROJECT,
        order_id=str(order.order_id),
        status=ReportedStatus(int(pb.ORDER_STATUS_PAID), "paid"),
        user_id="",
        created_at_ms=ms(T0),
        sandbox=False,
        items=(
            ProviderOrderItem("gold", 100, "virtual_currency", "0.05"),
            ProviderOrderItem("starter_pack", 2, BUNDLE, "4.99"),
            ProviderOrderItem("welcome_gift", 1, "virtual_good", "", is_free=True),
        ),
        currency="EUR",
        amount="14.98",
        invoice_id=str(order.invoice_id),
    )


async def test_user_id_is_read_when_the_answer_has_it(sim: XsollaSimulator, search: XsollaOrderSearch) -> None:
    """With `user.id` in the answer (the other version of the spec), the order names its player."""
    await paid_order(sim, user_id="player-7", created_at=T0)
    sim.order_search.include_user_id = True

    (found,) = (await search.search(project(), ms(T0), ms(T0), offset=0, limit=10)).orders

    assert found.user_id == "player-7"


async def test_sandbox_orders_and_every_status_word_are_told_apart(
    sim: XsollaSimulator, search: XsollaOrderSearch
) -> None:
    """`mode: sandbox` is a sandbox order; new, paid, done, canceled and expired map to the service's statuses."""
    words = ["new", "paid", "done", "canceled", "expired"]
    for n, word in enumerate(words):
        order = sim.create_order(PLAYER, items=[{"sku": "gold"}], sandbox=n == 1, created_at=T0 + timedelta(seconds=n))
        await sim.set_status(order.order_id, word)

    orders = (await search.search(project(), ms(T0), ms(T0) + 10_000, offset=0, limit=10)).orders

    assert [order.sandbox for order in orders] == [False, True, False, False, False]
    assert [order.status for order in orders] == [
        ReportedStatus(int(pb.ORDER_STATUS_NEW), "new"),
        ReportedStatus(int(pb.ORDER_STATUS_PAID), "paid"),
        ReportedStatus(int(pb.ORDER_STATUS_DONE), "done"),
        ReportedStatus(int(pb.ORDER_STATUS_CANCELED), "canceled"),
        ReportedStatus(int(pb.ORDER_STATUS_EXPIRED), "expired"),
    ]


async def test_the_published_example_answer_is_read(searcher_for: Callable[[str], XsollaOrderSearch]) -> None:
    """The example of Xsolla's spec (offsets in dates, bonus lines, no price on free lines, a string invoice id)."""
    example = {
        "orders": [
            {
                "order_id": 100510,
                "project_id": 101,
                "status": "paid",
                "date_created": "2018-01-07T15:32:06+03:00",
                "mode": "default",
                "user": {"id": "07e653a2b15011e6818f005056a54369", "country": "US", "email": "user@xsolla.com"},
                "is_free": False,
                "items": [
                    {"sku": "com.xsolla.1005101", "type": "game_key", "quantity": 1, "is_free": False,
                     "is_bonus": False, "price": {"amount": "67.3400", "currency": "USD"}},
                    {"sku": "com.xsolla.1005102", "type": "value_point", "quantity": 2, "is_free": True,
                     "is_bonus": True, "description": None},
                ],
                "price": {"amount": "67.3400", "amount_without_discount": "72.3400", "currency": "USD"},
                "invoice_id": "100510",
                "promotions": [{"promotion_id": 1005101}],
                "coupons": [],
            }
        ],
        "total_items_count": 1,
        "has_more": False,
    }  # fmt: skip
    async with crafted(lambda _: web.json_response(example)) as base:
        page = await searcher_for(base).search(project(101), 0, ms(T0), offset=0, limit=10)

    assert page.orders == (
        ProviderOrder(
            project_id=101,
            order_id="100510",
            status=ReportedStatus(int(pb.ORDER_STATUS_PAID), "paid"),
            user_id="07e653a2b15011e6818f005056a54369",
            created_at_ms=ms(datetime(2018, 1, 7, 12, 32, 6, tzinfo=UTC)),
            items=(
                ProviderOrderItem("com.xsolla.1005101", 1, "game_key", "67.3400"),
                ProviderOrderItem("com.xsolla.1005102", 2, "value_point", "", is_free=True, is_bonus=True),
            ),
            currency="USD",
            amount="67.3400",
            invoice_id="100510",
        ),
    )
    assert (page.has_more, page.total) == (False, 1)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda o: o.pop("order_id"), "orders[0].order_id"),
        (lambda o: o["items"][1].pop("sku"), "orders[0] (order 7).items[1].sku"),
        (lambda o: o["items"][0].update(quantity="1"), "orders[0] (order 7).items[0].quantity"),
        (lambda o: o.pop("items"), "orders[0] (order 7).items"),
        (lambda o: o.pop("status"), "orders[0] (order 7).status"),
        (lambda o: o.update(mode="live"), "orders[0] (order 7).mode"),
        (lambda o: o.update(date_created="yesterday"), "orders[0] (order 7).date_created"),
        (lambda o: o.update(project_id=OTHER), "orders[0] (order 7).project_id"),
    ],
)
async def test_an_unreadable_order_makes_the_page_unreadable_naming_the_field(
    searcher_for: Callable[[str], XsollaOrderSearch], change: Callable[[dict[str, Any]], object], named: str
) -> None:
    """An order the service cannot read in full (or another project's) is never skipped: the page fails, naming
    the field."""
    order: dict[str, Any] = {
        "order_id": 7,
        "project_id": PROJECT,
        "status": "paid",
        "date_created": "2026-03-01T12:00:00+00:00",
        "mode": "default",
        "items": [{"sku": "gold", "quantity": 1}, {"sku": "sword", "quantity": 1}],
    }
    change(order)
    answer = {"orders": [order], "has_more": False, "total_items_count": 1}
    async with crafted(lambda _: web.json_response(answer)) as base:
        with pytest.raises(SearchUnavailable) as raised:
            await searcher_for(base).search(project(), 0, ms(T0), offset=0, limit=10)

    assert named in str(raised.value)
    assert not isinstance(raised.value, SearchRateLimited)


async def test_answers_that_are_not_a_page_are_unavailable(searcher_for: Callable[[str], XsollaOrderSearch]) -> None:
    """Not JSON, no orders list, more orders than the limit, or a has_more that is not a boolean: unavailable."""
    order = {"order_id": 1, "status": "paid", "items": []}
    answers = [
        web.Response(text="<html>maintenance</html>", content_type="text/html"),
        web.json_response({"items": []}),
        web.json_response({"orders": [order, {**order, "order_id": 2}], "has_more": False}),
        web.json_response({"orders": [order], "has_more": "no"}),
    ]
    messages = []
    async with crafted(lambda _: answers.pop(0)) as base:
        search = searcher_for(base)
        for _ in range(4):
            with pytest.raises(SearchUnavailable) as raised:
                await search.search(project(), 0, ms(T0), offset=0, limit=1)
            messages.append(str(raised.value))

    assert "JSONDecodeError" in messages[0]
    assert "without an orders list" in messages[1]
    assert "2 orders for a limit of 1" in messages[2]
    assert "has_more" in messages[3]


async def test_has_more_is_inferred_when_the_answer_leaves_it_out(
    searcher_for: Callable[[str], XsollaOrderSearch],
) -> None:
    """Without `has_more`, the total says whether a page follows (or, without it, a full page)."""
    order = {"order_id": 1, "status": "paid", "items": []}
    bodies = [{"orders": [order], "total_items_count": 2}, {"orders": [order]}, {"orders": []}]
    async with crafted(lambda _: web.json_response(bodies.pop(0))) as base:
        search = searcher_for(base)
        pages = [await search.search(project(), 0, ms(T0), offset=0, limit=1) for _ in range(3)]

    assert [(page.has_more, page.total) for page in pages] == [(True, 2), (True, None), (False, None)]


# --- refusals, rate limits, failures ----------------------------------------------------------------------------


async def test_wrong_credentials_are_refused(sim: XsollaSimulator, search: XsollaOrderSearch) -> None:
    """401 on a wrong API key is SearchRefused; a project without an api_key is not configured and a search of it
    is a ConfigError; the merchant's credentials open any of its projects."""
    with pytest.raises(SearchRefused, match=r"401.*Error in Authentication method occurred"):
        await search.search(project(api_key="wrong-key"), 0, ms(T0), offset=0, limit=10)
    assert not search.configured(project(api_user=PROJECT))
    assert search.configured(project())
    with pytest.raises(ConfigError, match="no api_key"):
        await search.search(project(api_user=PROJECT), 0, ms(T0), offset=0, limit=10)

    sim.admin_auth.merchant_api_key = "merchant-key-0123"
    merchant = project(api_key="merchant-key-0123", api_user=sim.admin_auth.merchant_id)
    assert (await search.search(merchant, 0, ms(T0), offset=0, limit=10)).orders == ()
    assert [call.status for call in sim.order_search.calls_for(PROJECT)] == [401, 200]


async def test_429_is_rate_limited_with_the_retry_after_asked(sim: XsollaSimulator, search: XsollaOrderSearch) -> None:
    """Retry-After in seconds is the wait; an HTTP date the time until it; absent or unreadable 1 s; over a
    minute, a minute."""
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    waits = []
    for retry_after in (7, soon, None, "soon", 3600):
        sim.order_search.fail(1, 429, retry_after=retry_after)
        with pytest.raises(SearchRateLimited) as raised:
            await search.search(project(), 0, ms(T0), offset=0, limit=10)
        waits.append(raised.value.retry_after_s)

    assert waits[0] == 7.0
    assert 20.0 < waits[1] <= 30.0
    assert waits[2:] == [1.0, 1.0, 60.0]


async def test_server_errors_and_network_failures_are_unavailable(
    sim: XsollaSimulator, search: XsollaOrderSearch, searcher_for: Callable[[str], XsollaOrderSearch]
) -> None:
    """5xx is SearchUnavailable, never refused nor rate limited; so is a server that cannot be reached; the client
    itself never retries."""
    for status in (500, 502, 503):
        sim.order_search.fail(1, status)
        with pytest.raises(SearchUnavailable, match=str(status)) as raised:
            await search.search(project(), 0, ms(T0), offset=0, limit=10)
        assert not isinstance(raised.value, SearchRateLimited)
    assert [call.status for call in sim.order_search.calls_for(PROJECT)] == [500, 502, 503]

    async with crafted(lambda _: web.json_response({})) as base:
        pass  # closed: nothing listens there any more
    with pytest.raises(SearchUnavailable, match="ClientConnectorError"):
        await searcher_for(base).search(project(), 0, ms(T0), offset=0, limit=10)


async def test_requests_are_counted_by_result(
    sim: XsollaSimulator, search: XsollaOrderSearch, registry: CollectorRegistry
) -> None:
    """Every search is counted by result (ok, 401, 429, 5xx) and timed, with no order or player in the labels."""
    await search.search(project(), 0, ms(T0), offset=0, limit=10)
    with pytest.raises(SearchRefused):
        await search.search(project(api_key="wrong"), 0, ms(T0), offset=0, limit=10)
    for status in (429, 503):
        sim.order_search.fail(1, status)
        with pytest.raises(SearchUnavailable):
            await search.search(project(), 0, ms(T0), offset=0, limit=10)

    assert [requests(registry, r) for r in ("ok", "401", "429", "5xx")] == [1.0, 1.0, 1.0, 1.0]
    count = registry.get_sample_value("entitlements_xsolla_request_seconds_count", {"operation": "order_search"})
    assert count == 4.0


async def test_a_bad_page_request_is_refused_before_any_request(
    sim: XsollaSimulator, search: XsollaOrderSearch
) -> None:
    """A limit over 10, a negative offset or a range that ends before it starts is the caller's bug: ValueError."""
    for kwargs in ({"offset": 0, "limit": 11}, {"offset": -1, "limit": 10}, {"offset": 0, "limit": 0}):
        with pytest.raises(ValueError, match=r"limit must be 1\.\.10"):
            await search.search(project(), 0, ms(T0), **kwargs)
    with pytest.raises(ValueError, match="from <= until"):
        await search.search(project(), ms(T0), ms(T0) - 1, offset=0, limit=10)
    assert sim.order_search.calls == []


# --- the simulator's search ---------------------------------------------------------------------------------------


async def test_the_simulator_answers_422_to_a_malformed_search(
    sim: XsollaSimulator, http: aiohttp.ClientSession
) -> None:
    """A limit out of 1..10, a negative offset or a date that is not ISO 8601 is 422 with the Store API's body."""
    url = f"{sim.store_api_url}/v3/project/{PROJECT}/admin/order/search"
    auth = {"Authorization": "Basic " + base64.b64encode(f"{PROJECT}:{API_KEY}".encode()).decode()}
    for body, named in (
        ({"limit": 11}, "limit"),
        ({"limit": 0}, "limit"),
        ({"offset": -1}, "offset"),
        ({"created_date_from": "last week"}, "created_date_from"),
    ):
        async with http.post(url, json=body, headers=auth) as answer:
            assert answer.status == 422
            error = await answer.json()
        assert (error["statusCode"], error["errorCode"]) == (422, 1102)
        assert f"`{named}`" in error["errorMessage"]
    async with http.post(url, data=b"[1, 2]", headers=auth) as answer:
        assert answer.status == 422


async def test_the_simulators_rate_limit_answers_429_per_project_and_counts_requests(
    sim: XsollaSimulator, search: XsollaOrderSearch, http: aiohttp.ClientSession
) -> None:
    """Over `burst` requests at once, a project is answered 429 with Retry-After (capped by the client at a
    minute); another project has its own allowance; every request is counted."""
    sim.order_search.rate_limit(0.001, burst=3)  # one request per 1000 s after the first three
    for _ in range(3):
        await search.search(project(), 0, ms(T0), offset=0, limit=10)
    with pytest.raises(SearchRateLimited) as raised:
        await search.search(project(), 0, ms(T0), offset=0, limit=10)
    await search.search(project(OTHER), 0, ms(T0), offset=0, limit=10)

    url = f"{sim.store_api_url}/v3/project/{PROJECT}/admin/order/search"
    auth = {"Authorization": "Basic " + base64.b64encode(f"{PROJECT}:{API_KEY}".encode()).decode()}
    async with http.post(url, json={}, headers=auth) as answer:
        assert answer.status == 429
        assert 990 <= int(answer.headers["Retry-After"]) <= 1000

    assert raised.value.retry_after_s == 60.0
    assert [call.status for call in sim.order_search.calls_for(PROJECT)] == [200, 200, 200, 429, 429]
    assert (sim.order_search.requests(PROJECT), sim.order_search.requests(OTHER)) == (5, 1)
    sim.order_search.rate_limit(None)
    await search.search(project(), 0, ms(T0), offset=0, limit=10)


async def test_the_rate_limit_refills_at_its_rate(searcher_for: Callable[[str], XsollaOrderSearch]) -> None:
    """With 2 requests a second and a burst of 2: a third at once waits 1 s; half a second later one more is
    allowed, then none until the next half second (a clock the test moves)."""
    now = [1000.0]
    auth = AdminAuth(merchant_id=1)
    auth.set_api_key(PROJECT, API_KEY)
    api = OrderSearchApi(OrderBook(), auth, clock=lambda: now[0])
    api.rate_limit(2.0, burst=2)
    app = web.Application()
    api.add_routes(app, control=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        search = searcher_for(f"http://127.0.0.1:{runner.addresses[0][1]}/api")
        outcomes: list[float | None] = []

        async def attempt() -> None:
            try:
                await search.search(project(), 0, ms(T0), offset=0, limit=10)
                outcomes.append(None)
            except SearchRateLimited as exc:
                outcomes.append(exc.retry_after_s)

        for _ in range(3):
            await attempt()
        now[0] += 0.5
        for _ in range(2):
            await attempt()
    finally:
        await runner.cleanup()

    assert outcomes == [None, None, 1.0, None, 1.0]


# --- Get order with its items -------------------------------------------------------------------------------------


async def test_get_order_reads_the_items(sim: XsollaSimulator, registry: CollectorRegistry) -> None:
    """`XsollaOrders.order` reads an order's lines (sku, quantity, unit price, free) and total with the player's
    token; a refused token is TokenRefused and an unknown order OrderUnknown."""
    order = sim.create_order(
        PLAYER,
        items=[{"sku": "gold", "quantity": 100, "price": "0.05"}, {"sku": "gift", "quantity": 1, "is_free": True}],
    )
    await sim.set_status(order.order_id, "paid")
    token = sim.issue_token(PLAYER)
    lookup = XsollaOrders(sim.store_api_url, timeout_s=5.0, metrics=XsollaMetrics.on(registry))
    player = Player(PROJECT, PLAYER, token)
    try:
        found = await lookup.order(player, str(order.order_id))
        with pytest.raises(OrderUnknown):
            await lookup.order(player, "999999999")
        sim.revoke_token(token)
        with pytest.raises(TokenRefused):
            await lookup.order(player, str(order.order_id))
    finally:
        await lookup.close()

    assert found == ProviderOrder(
        project_id=PROJECT,
        order_id=str(order.order_id),
        status=ReportedStatus(int(pb.ORDER_STATUS_PAID), "paid"),
        user_id=PLAYER,
        items=(ProviderOrderItem("gold", 100, "", "0.05"), ProviderOrderItem("gift", 1, "", "0", is_free=True)),
        currency="USD",
        amount="5",
    )
    assert sim.get_order_requests(order.order_id) == 2  # the read, and the one refused


def test_search_sends_the_range_rounded_outwards() -> None:
    """`from` is rounded down and `until` up to the second, in UTC."""
    assert iso_second(ms(T0) + 999, up=False) == "2026-03-01T12:00:00+00:00"
    assert iso_second(ms(T0) + 1, up=True) == "2026-03-01T12:00:01+00:00"
    assert iso_second(ms(T0), up=True) == "2026-03-01T12:00:00+00:00"
    assert json.dumps(iso_second(0, up=False)) == '"1970-01-01T00:00:00+00:00"'
