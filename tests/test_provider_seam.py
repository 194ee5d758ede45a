"""The seam to a payment provider holds: a small provider written here, which is not Xsolla, drives the real
gateway's receiver (webhooks stored, applied by the real consumer, answered in its own shapes) and the real
order trackers (its socket and its lookup feed GetOrderStatus). Nothing in the gateway or the service is told
anything about it but the `core.webhooks` and `core.order_sources` interfaces.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest

from core.order_sources import (
    OrderSources,
    OrderUnknown,
    Player,
    ReportedStatus,
    SocketListener,
    TokenRefused,
)
from core.projects import Projects
from core.reconciliation import ProviderOrder, ProviderOrderItem
from core.webhooks import (
    Action,
    FoundUser,
    InvalidParameter,
    InvalidSignature,
    Notification,
    UserQuery,
    Verified,
)
from entitlements import AuthenticationError as ClientAuthenticationError
from entitlements import NotFoundError
from entitlements.v1 import entitlements_pb2 as pb
from entitlements.v1 import events_pb2 as ev
from server.app import Service
from server.config import ConsumerSettings
from server.tracking.settings import TrackingSettings
from tests.helpers.services import ClientFactory, ServiceFactory
from tests.helpers.stores import StoreUnderTest
from tests.helpers.waiting import eventually
from webhook_gateway import Gateway, GatewaySettings

ACME_SECRET = b"acme-signing-key"
PLAYER = "player-7"
PROJECT = 7


# --- the provider: webhooks -----------------------------------------------------------------------------------


def acme_signature(body: bytes) -> str:
    return hmac.new(ACME_SECRET, body, hashlib.sha256).hexdigest()


class AcmeAuthentication:
    """One Acme request's HMAC, computed as the body arrives."""

    def __init__(self, given: str) -> None:
        self._given = given
        self._mac = hmac.new(ACME_SECRET, digestmod=hashlib.sha256)

    def update(self, chunk: bytes) -> None:
        self._mac.update(chunk)

    def verify(self, raw: bytes) -> Verified:
        if not hmac.compare_digest(self._given, self._mac.hexdigest()):
            raise InvalidSignature("bad acme signature")
        try:
            document = json.loads(raw)
        except ValueError:
            document = None
        return Verified(raw, document if isinstance(document, dict) else None, PROJECT)


class AcmeWebhooks:
    """Acme signs with HMAC-SHA256 in `X-Acme-Signature` and sends `{"kind", "player", "order", "lines"}`."""

    name = "acme"

    def authentication(self, headers: Mapping[str, str], route_project: str | None) -> AcmeAuthentication:
        given = headers.get("X-Acme-Signature", "")
        if re.fullmatch("[0-9a-f]{64}", given) is None:
            raise InvalidSignature("no acme signature")
        return AcmeAuthentication(given)

    def interpret(self, verified: Verified, received_at_ns: int) -> Notification:
        doc = verified.document
        if doc is None or not isinstance(doc.get("player"), str):
            raise InvalidParameter("player", "is required")
        if doc.get("kind") == "who":
            query = UserQuery(self.name, PROJECT, public_id=doc["player"])
            return Notification(Action.SEARCH_USER, "who", "who", PROJECT, query=query)
        event = ev.WebhookEvent(
            provider=self.name,
            project_id=PROJECT,
            notification_type="purchase",
            type=ev.EVENT_TYPE_ORDER_PAID,
            user_id=doc["player"],
            event_id=f"acme:{doc['order']}:paid",
        )
        event.received_at.FromNanoseconds(received_at_ns)
        event.order.order_id = str(doc["order"])
        event.order.lines.extend(ev.OrderLine(sku=sku, quantity=qty) for sku, qty in doc["lines"])
        return Notification(Action.STORE, "purchase", "purchase", PROJECT, event=event)

    def type_label(self, verified: Verified) -> str:
        return "purchase"

    def error_body(self, status: int, result: str, message: str) -> bytes:
        return json.dumps({"acme_error": result, "status": status}).encode()

    def user_answer(self, found: FoundUser) -> bytes:
        return json.dumps({"acme_player": found.id}).encode()

    def describe(self) -> Mapping[str, object]:
        return {"acme": True}

    def warnings(self) -> Mapping[str, str]:
        return {}


# --- the provider: order status -------------------------------------------------------------------------------

_WORDS = {"open": pb.ORDER_STATUS_NEW, "charged": pb.ORDER_STATUS_PAID, "shipped": pb.ORDER_STATUS_DONE}


class AcmeLookup:
    """Acme's order API: statuses by order id, 'who?' for a bad token, unknown orders refused."""

    def __init__(self) -> None:
        self.statuses: dict[str, str] = {}
        self.asked: list[tuple[Player, str]] = []
        self.closed = False

    async def status(self, player: Player, order_id: str) -> ReportedStatus:
        self.asked.append((player, order_id))
        if player.token == "stolen":
            raise TokenRefused("acme says no")
        if order_id not in self.statuses:
            raise OrderUnknown("no such order")
        word = self.statuses[order_id]
        return ReportedStatus(_WORDS.get(word), word)

    async def order(self, player: Player, order_id: str) -> ProviderOrder:
        status = await self.status(player, order_id)
        return ProviderOrder(player.project_id, order_id, status, player.user_id, items=(ProviderOrderItem("gem", 1),))

    async def close(self) -> None:
        self.closed = True


class AcmeLease:
    def __init__(self, pool: AcmeSockets, order_id: str, listener: SocketListener) -> None:
        self._pool, self._order_id, self._listener = pool, order_id, listener

    def release(self) -> None:
        self._pool.listeners.pop(self._order_id, None)


class AcmeSockets:
    """Acme pushes statuses; the test plays the server side through `push`."""

    def __init__(self) -> None:
        self.listeners: dict[str, SocketListener] = {}
        self.acquired = asyncio.Event()
        self.closed = False

    def acquire(self, player: Player, order_id: str, listener: SocketListener) -> AcmeLease:
        self.listeners[order_id] = listener
        self.acquired.set()
        return AcmeLease(self, order_id, listener)

    def push(self, order_id: str, word: str) -> None:
        self.listeners[order_id].socket_status(ReportedStatus(_WORDS.get(word), word))

    async def close(self) -> None:
        self.closed = True


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture
async def acme_gateway(redis_server: StoreUnderTest) -> AsyncIterator[Gateway]:
    """The real gateway with Acme as its webhook provider."""
    settings = GatewaySettings(port=0, metrics_port=None, **redis_server.settings, shutdown_grace_s=1.0)
    gateway = Gateway(settings, provider=AcmeWebhooks())
    await gateway.start()
    yield gateway
    await gateway.stop()


@pytest.fixture
def acme() -> tuple[AcmeLookup, AcmeSockets]:
    """Acme's order lookup and sockets."""
    return AcmeLookup(), AcmeSockets()


async def post(url: str, document: dict[str, Any], *, signature: str | None = None) -> tuple[int, bytes]:
    body = json.dumps(document).encode()
    headers = {"X-Acme-Signature": acme_signature(body) if signature is None else signature}
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as response:
        return response.status, await response.read()


async def service_with(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, sources: OrderSources, **overrides: Any
) -> Service:
    overrides.setdefault("projects", Projects.single(PROJECT))
    return await service_factory(
        redis_url=redis_server.url,
        order_sources=sources,
        consumer=ConsumerSettings(block_ms=50),
        tracking=TrackingSettings(ws_silence_s=30.0, poll_interval_s=0.05, grant_wait_s=0),
        **overrides,
    )


# --- the tests ------------------------------------------------------------------------------------------------


async def test_a_second_providers_webhooks_are_stored_answered_and_granted(
    acme_gateway: Gateway,
    acme: tuple[AcmeLookup, AcmeSockets],
    redis_server: StoreUnderTest,
    service_factory: ServiceFactory,
    client_factory: ClientFactory,
) -> None:
    """Acme's signed purchase is stored at /webhooks/acme, applied by the consumer, and refused in Acme's shape."""
    assert acme_gateway.url.endswith("/webhooks/acme")
    purchase = {"kind": "purchase", "player": PLAYER, "order": "A-1", "lines": [["gold", 5]]}
    assert (await post(acme_gateway.url, purchase))[0] == 204
    refused = (400, json.dumps({"acme_error": "invalid_signature", "status": 400}).encode())
    assert await post(acme_gateway.url, purchase, signature="forged") == refused  # refused from the header
    assert await post(acme_gateway.url, purchase, signature="0" * 64) == refused  # refused over the body
    assert await post(acme_gateway.url, {"kind": "who", "player": "pub-9"}) == (
        200,
        json.dumps({"acme_player": "pub-9"}).encode(),
    )
    lookup, _ = acme
    service = await service_with(service_factory, redis_server, OrderSources("Acme", lookup, None))
    client = await client_factory(service)

    async def granted() -> bool:
        return (await client.check_entitlement(PLAYER, "gold")).active

    await eventually(granted, what="the consumer to apply Acme's purchase")
    assert (await client.check_entitlement(PLAYER, "gold")).entitlement.quantity == 5


async def test_a_second_providers_socket_and_lookup_feed_the_tracker(
    acme: tuple[AcmeLookup, AcmeSockets],
    redis_server: StoreUnderTest,
    service_factory: ServiceFactory,
    client_factory: ClientFactory,
) -> None:
    """GetOrderStatus follows an Acme order on Acme's socket in Acme's words, with its default project."""
    lookup, sockets = acme
    service = await service_with(
        service_factory, redis_server, OrderSources("Acme", lookup, sockets, default_project_id=PROJECT)
    )
    client = await client_factory(service)
    stream = client.get_order_status("A-2", PLAYER, token="player-token")
    async with asyncio.timeout(10):
        await sockets.acquired.wait()
    sockets.push("A-2", "refunded?")  # not one of Acme's words: logged and ignored
    sockets.push("A-2", "charged")
    sockets.push("A-2", "shipped")
    async with asyncio.timeout(10):
        updates = [(u.status, u.source) async for u in stream]
    assert updates == [
        (pb.ORDER_STATUS_PAID, pb.ORDER_STATUS_SOURCE_WEBSOCKET),
        (pb.ORDER_STATUS_DONE, pb.ORDER_STATUS_SOURCE_WEBSOCKET),
    ]
    assert lookup.asked == []  # the socket never failed: no polling


async def test_without_a_socket_the_tracker_polls_the_providers_lookup(
    acme: tuple[AcmeLookup, AcmeSockets],
    redis_server: StoreUnderTest,
    service_factory: ServiceFactory,
    client_factory: ClientFactory,
) -> None:
    """A provider without sockets is polled; its refusals end the stream with the provider's name."""
    lookup, _ = acme
    lookup.statuses["A-3"] = "shipped"
    # Any project served (no list), none by default: the request names it.
    service = await service_with(
        service_factory, redis_server, OrderSources("Acme", lookup, None), projects=Projects.single(None)
    )
    client = await client_factory(service)
    async with asyncio.timeout(10):
        updates = [(u.status, u.source) async for u in client.get_order_status("A-3", PLAYER, project_id=9, token="t")]
    assert updates == [(pb.ORDER_STATUS_DONE, pb.ORDER_STATUS_SOURCE_POLLING)]
    assert lookup.asked[0] == (Player(9, PLAYER, "t"), "A-3")

    lookup.statuses["A-5"] = "shipped"  # an order A-3's record (done) does not answer already
    with pytest.raises(ClientAuthenticationError, match="Acme rejected the token"):
        async with asyncio.timeout(10):
            [u async for u in client.get_order_status("A-5", PLAYER, project_id=9, token="stolen")]
    with pytest.raises(NotFoundError, match="Acme does not know order A-4 in project 9"):
        async with asyncio.timeout(10):
            [u async for u in client.get_order_status("A-4", PLAYER, project_id=9, token="t")]


async def test_the_service_closes_the_providers_sources(
    acme: tuple[AcmeLookup, AcmeSockets], redis_server: StoreUnderTest, service_factory: ServiceFactory
) -> None:
    """Stopping the service closes the provider's sockets and lookup."""
    lookup, sockets = acme
    service = await service_with(service_factory, redis_server, OrderSources("Acme", lookup, sockets))
    await service.stop(grace_s=0)
    assert (lookup.closed, sockets.closed) == (True, True)
