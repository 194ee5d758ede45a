"""The simulator with several projects: each signs with its own secret and sends to its own URL; orders, tokens
and WebSocket channels of one project are invisible from another; and the HTTP control API drives projects,
refunds, subscriptions and held webhooks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from tests.helpers.receiver import ReceiverFactory
from xsolla_simulator import InvalidRequest, SimProject, XsollaSimulator
from xsolla_simulator.testing import SimulatorFactory, simulator_factory_context

A, B = 1001, 2002
SECRET_A, SECRET_B = "secret-of-a-0123456789", "secret-of-b-0123456789"
ITEMS = [{"sku": "gold", "quantity": 100, "type": "virtual_currency", "price": "0.05"}]


@pytest.fixture
async def sim_factory() -> AsyncIterator[SimulatorFactory]:
    """Starts simulators; stops them all at the end."""
    async with simulator_factory_context() as make:
        yield make


@pytest.fixture
async def sim(sim_factory: SimulatorFactory) -> XsollaSimulator:
    """Projects A and B, without webhooks."""
    return await sim_factory(project_id=A, webhook_secret=SECRET_A, projects=[SimProject(B, webhook_secret=SECRET_B)])


async def test_each_project_signs_with_its_own_secret_and_sends_to_its_own_url(
    sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory
) -> None:
    """A's webhooks go to `<path>/A` signed with A's secret, B's to the bare path signed with B's, each naming its
    project and merchant; the same player's orders in A and B stay two orders."""
    receiver = await receiver_factory()
    sim = await sim_factory(project_id=A, webhook_url=receiver.url_for(A), webhook_secret=SECRET_A)
    sim.add_project(B, webhook_url=receiver.url, webhook_secret=SECRET_B, merchant_id=777)
    in_a = sim.create_order("player-1", ITEMS, project_id=A)
    in_b = sim.create_order("player-1", ITEMS, project_id=B)

    for order in (in_a, in_b):
        await sim.set_status(order.order_id, "paid")
    await sim.subscriptions.create("player-1", project_id=B)
    await sim.wait_webhooks_settled(3)

    by_path = {(r.path, r.type): r for r in receiver.received}
    assert sorted(by_path) == [
        ("/webhooks/xsolla", "create_subscription"),
        ("/webhooks/xsolla", "order_paid"),
        (f"/webhooks/xsolla/{A}", "order_paid"),
    ]
    paid_a, paid_b = by_path[(f"/webhooks/xsolla/{A}", "order_paid")], by_path[("/webhooks/xsolla", "order_paid")]
    assert paid_a.signed_with(SECRET_A)
    assert not paid_a.signed_with(SECRET_B)
    assert paid_b.signed_with(SECRET_B)
    assert not paid_b.signed_with(SECRET_A)
    assert by_path[("/webhooks/xsolla", "create_subscription")].signed_with(SECRET_B)
    assert paid_a.document["billing"]["settings"] == {"project_id": A, "merchant_id": 100001}
    assert paid_b.document["billing"]["settings"] == {"project_id": B, "merchant_id": 777}
    assert in_a.order_id != in_b.order_id
    assert {(d.project_id, d.order_id) for d in sim.webhook_deliveries if d.order_id} == {
        (A, in_a.order_id),
        (B, in_b.order_id),
    }


async def test_get_order_shows_an_order_only_under_its_own_project(
    sim: XsollaSimulator, http: aiohttp.ClientSession
) -> None:
    """An order of A answers under A's path with an A token; under B's path, or with B's token for the same
    player, it is 404, as Xsolla answers an order the caller cannot see."""
    order = sim.create_order("player-1", ITEMS, project_id=A)
    token_a = sim.issue_token("player-1", project_id=A)
    token_b = sim.issue_token("player-1", project_id=B)
    in_b = sim.create_order("player-1", ITEMS, project_id=B)

    async def status_of(project: int, order_id: int, token: str) -> int:
        url = f"{sim.store_api_url}/v2/project/{project}/order/{order_id}"
        async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as answer:
            return answer.status

    assert await status_of(A, order.order_id, token_a) == 200
    assert await status_of(B, order.order_id, token_a) == 404
    assert await status_of(B, order.order_id, token_b) == 404
    assert await status_of(A, order.order_id, token_b) == 404
    assert await status_of(B, in_b.order_id, token_b) == 200
    assert await status_of(A, in_b.order_id, token_a) == 404


async def _connect(ws: ClientConnection, token: str, project_id: int) -> dict[str, Any]:
    await ws.send(json.dumps({"id": 1, "connect": {"data": {"auth": token, "project_id": project_id}}}))
    reply: dict[str, Any] = json.loads(await ws.recv())
    return reply


async def test_websocket_channels_are_per_project(sim: XsollaSimulator) -> None:
    """A token opens only its own project's socket; a player connected to A gets A's publications, never those
    of the same player's orders in B; a project the simulator does not serve is refused."""
    token_a = sim.issue_token("player-1", project_id=A)
    stranger = sim.issue_token("player-1", project_id=3003)
    order_a = sim.create_order("player-1", ITEMS, project_id=A)
    order_b = sim.create_order("player-1", ITEMS, project_id=B)

    async with ws_connect(sim.ws_url, proxy=None) as wrong, ws_connect(sim.ws_url, proxy=None) as unknown:
        assert (await _connect(wrong, token_a, B))["error"]["code"] == 101
        assert (await _connect(unknown, stranger, 3003))["error"]["code"] == 101
    async with ws_connect(sim.ws_url, proxy=None) as ws:
        reply = await _connect(ws, token_a, A)
        assert list(reply["connect"]["subs"]) == [sim.channel_for("player-1", project_id=A)] == [f"orders:{A}:player-1"]
        silent = await sim.set_status(order_b.order_id, "paid")
        heard = await sim.set_status(order_a.order_id, "paid")
        push = json.loads(await ws.recv())

    assert silent.sockets == 0
    assert heard.sockets == 1
    assert push["push"]["pub"]["data"] == {"order_id": order_a.order_id, "status": "paid"}
    assert push["push"]["channel"] == f"orders:{A}:player-1"


async def test_projects_are_checked_when_added_and_named(sim: XsollaSimulator) -> None:
    """A project served twice, a bad delivery mode or URL, and an order or token for a project not served are
    refused; the first project stays the default."""
    with pytest.raises(InvalidRequest, match="already served"):
        sim.add_project(B)
    with pytest.raises(InvalidRequest, match="webhook_mode"):
        sim.add_project(4004, webhook_mode="batched")
    with pytest.raises(InvalidRequest, match="webhook_url"):
        sim.add_project(4004, webhook_url="ftp://example")
    with pytest.raises(InvalidRequest, match="not served"):
        sim.create_order("player-1", ITEMS, project_id=4004)
    with pytest.raises(InvalidRequest, match="not served"):
        await sim.subscriptions.create("player-1", project_id=4004)
    assert sim.project_id == A
    assert [p.project_id for p in sim.projects] == [A, B]
    assert sim.create_order("player-1", ITEMS).project_id == A


async def test_control_api_drives_projects_refunds_subscriptions_and_holds(
    sim_factory: SimulatorFactory, receiver_factory: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    """Over /_sim: add a separate-mode project, order and refund in it, run a subscription with chosen dates,
    hold its renewal and release it after the cancel, and list every webhook."""
    receiver = await receiver_factory()
    sim = await sim_factory(project_id=A, webhook_url=receiver.url, webhook_secret=SECRET_A)
    control = sim.control_url

    async def call(method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        async with http.request(method, control + path, json=body) as answer:
            return answer.status, await answer.json()

    project = {"project_id": B, "webhook_url": receiver.url_for(B), "webhook_secret": SECRET_B}
    assert await call("POST", "/projects", {**project, "webhook_mode": "separate"}) == (
        201,
        {"project_id": B, "webhook_url": receiver.url_for(B), "webhook_mode": "separate", "merchant_id": 100001},
    )
    assert (await call("POST", "/projects", project))[0] == 400
    status, order = await call("POST", "/orders", {"user_id": "player-1", "items": ITEMS, "project_id": B})
    assert (status, order["project_id"]) == (201, B)
    await call("POST", f"/orders/{order['order_id']}/status", {"status": "paid"})
    await sim.wait_webhooks_settled(3)
    status, refunded = await call("POST", f"/orders/{order['order_id']}/refund", {"code": 4})
    assert (status, refunded["webhook"]["type"]) == (200, "refund")

    body = {"user_id": "player-1", "project_id": B, "date_create": "2026-03-01T12:00:00+00:00", "period_days": 10}
    status, subscription = await call("POST", "/subscriptions", body)
    assert (status, subscription["date_next_charge"]) == (201, "2026-03-11T12:00:00+00:00")
    path = f"/subscriptions/{subscription['subscription_id']}"
    assert (await call("POST", "/webhooks/hold", {"types": ["update_subscription"], "times": 1}))[0] == 200
    assert (await call("POST", path + "/renew"))[1]["date_next_charge"] == "2026-03-21T12:00:00+00:00"
    assert (await call("POST", path + "/cancel", {"date_end": "2026-03-15T00:00:00+00:00"}))[1]["status"] == "canceled"
    assert (await call("POST", path + "/cancel", {"date_end": "2026-03-15"}))[0] == 400
    assert (await call("GET", "/subscriptions/nope"))[0] == 404
    status, webhooks = await call("GET", "/webhooks")
    (held,) = [w for w in webhooks if w["held"]]
    assert json.loads(held["body"])["subscription"]["date_next_charge"] == "2026-03-21T12:00:00+00:00"
    status, released = await call("POST", f"/webhooks/{held['webhook_id']}/release")
    assert (status, released["outcome"]) == (200, "delivered")
    await sim.wait_webhooks_settled(3)

    assert [(r.path, r.type) for r in receiver.received] == [
        (f"/webhooks/xsolla/{B}", t)
        for t in (
            "payment",
            "order_paid",
            "refund",
            "order_canceled",
            "create_subscription",
            "cancel_subscription",
            "update_subscription",
        )
    ]
    assert all(r.signed_with(SECRET_B) for r in receiver.received)
    assert receiver.of_type("refund")[0].document["refund_details"]["code"] == 4
