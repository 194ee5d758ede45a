"""One set of limits at both doors (`core.limits`): what the gateway acknowledges, the service applies.

The real gateway and the real service share one Valkey: signed webhooks go in over HTTP, and what they grant is
read back through the Python client. An identifier at the limit (256 bytes, multi-byte characters included) and
the largest quantity travel the whole way; one past the limit is refused at the door and stores nothing; an event
id that would be longer than the limit (a long order or plan id) is shortened, still deduplicated, and applied.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.limits import MAX_CONSUMABLE_TOTAL, MAX_ID_BYTES, all_identifiers, identifier_problem, quantity_problem
from core.projects import Projects
from entitlements import AsyncEntitlementsClient
from providers.xsolla import WebhookSettings
from server.app import Service
from server.embedded import EmbeddedRedis
from tests.helpers.events import PARTITIONS, consumer_settings, dead_letters, drained
from tests.helpers.gateway import PROJECT, SECRET, fixture, gateway_settings, running_gateway, send, stored_events
from tests.helpers.services import ServiceFactory
from webhook_gateway import Gateway

AT_LIMIT = "é" * (MAX_ID_BYTES // 2)  # 128 characters, 256 bytes


@pytest.fixture
async def gateway(redis_server: EmbeddedRedis) -> AsyncIterator[Gateway]:
    """A gateway whose default secret signs for the service's project, the one a webhook naming none is."""
    settings = gateway_settings(redis_url=redis_server.url, event_partitions=PARTITIONS)
    async with running_gateway(settings, WebhookSettings(default_secret=SECRET, default_project=PROJECT)) as gateway:
        yield gateway


@pytest.fixture
async def service(service_factory: ServiceFactory, redis_server: EmbeddedRedis) -> Service:
    """The service on the test's Valkey, consuming with fast timings, for projects without a catalog (any sku is
    a plain item, so a sku at the limit is granted; `client` calls it)."""
    return await service_factory(redis_url=redis_server.url, **consumer_settings(Projects.single(PROJECT)))


def order_paid(user: Any, order_id: Any, lines: list[tuple[Any, Any]]) -> bytes:
    document = json.loads(fixture("order_paid_separate"))
    document["user"]["external_id"] = user
    document["order"]["id"] = order_id
    document["items"] = [{"sku": sku, "type": "virtual_good", "quantity": quantity} for sku, quantity in lines]
    return json.dumps(document).encode()


async def test_identifiers_and_quantities_at_the_limit_are_granted(
    gateway: Gateway,
    http: aiohttp.ClientSession,
    redis_client: aioredis.Redis,
    client: AsyncEntitlementsClient,
) -> None:
    """A 256-byte player id and sku, an order id whose event id would be 800 bytes, the largest quantity."""
    long_order = "ö" * 128
    body = order_paid(AT_LIMIT, long_order, [(AT_LIMIT, MAX_CONSUMABLE_TOTAL)])
    for _ in range(2):  # the retry is a duplicate: the shortened event id is stable
        assert (await send(http, gateway.url, body)).status == 204
    (stored,) = await stored_events(redis_client, partitions=PARTITIONS)
    assert identifier_problem(stored.event.event_id) is None
    assert stored.event.event_id.startswith(f"xsolla:{PROJECT}:order:sha256=")
    await drained(redis_client)
    assert await dead_letters(redis_client) == []
    check = await client.check_entitlement(AT_LIMIT, AT_LIMIT)
    assert check.active
    assert check.entitlement.quantity == MAX_CONSUMABLE_TOTAL


async def test_a_subscription_with_a_long_plan_id_is_applied(
    gateway: Gateway,
    http: aiohttp.ClientSession,
    redis_client: aioredis.Redis,
    client: AsyncEntitlementsClient,
) -> None:
    """Plan, subscription id and three dates make an event id past 256 bytes: shortened, applied, listed."""
    document = json.loads(fixture("create_subscription"))
    document["subscription"]["plan_id"] = "plan-" + "x" * 200
    document["settings"]["project_id"] = PROJECT  # the service's project, whose subscriptions the client lists
    assert (await send(http, gateway.url, json.dumps(document).encode())).status == 204
    await drained(redis_client)
    assert await dead_letters(redis_client) == []
    listed = await client.list_subscriptions(str(document["user"]["id"]))
    assert [s.plan_external_id for s in listed.subscriptions] == ["plan-" + "x" * 200]


def _identifiers() -> st.SearchStrategy[Any]:
    near_limit = st.sampled_from(["a" * 256, "a" * 257, "é" * 128, "é" * 127 + "ab", "x\u0085y", "x\ty", "\u009f"])
    return st.one_of(
        near_limit,
        st.text(max_size=300),
        st.integers(min_value=-5, max_value=10**400),
    )


FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(
    user=_identifiers(),
    order_id=_identifiers(),
    sku=_identifiers(),
    quantity=st.one_of(
        st.sampled_from([0, 1, MAX_CONSUMABLE_TOTAL, MAX_CONSUMABLE_TOTAL + 1]), st.integers(-5, 10**13)
    ),
)
async def test_the_gateway_acknowledges_exactly_what_the_service_can_apply(
    gateway: Gateway, http: aiohttp.ClientSession, user: Any, order_id: Any, sku: Any, quantity: int
) -> None:
    """A signed order_paid is 204 if and only if its player, order, sku and quantity pass the service's limits;
    otherwise 400 INVALID_PARAMETER (never 5xx)."""
    body = order_paid(user, order_id, [(sku, quantity)])
    answer = await send(http, gateway.url, body)

    def usable(value: Any) -> bool:
        if isinstance(value, int):
            return value >= 0 and len(str(value)) <= MAX_ID_BYTES
        return bool(value.strip()) and identifier_problem(value) is None

    expected = (
        usable(user) and usable(order_id) and usable(sku) and quantity_problem(quantity, MAX_CONSUMABLE_TOTAL) is None
    )
    if expected:
        assert answer.status == 204, answer.body
    else:
        assert (answer.status, answer.json()["error"]["code"]) == (400, "INVALID_PARAMETER"), answer.body


_TRICKY = st.one_of(
    st.text(max_size=70),
    st.text(
        alphabet=st.sampled_from(["a", "é", "€", "😀", "\x00", "\x7f", "\x9f", "\ud800", "\udc00", " "]), max_size=8
    ),
    st.sampled_from(["", "a" * 256, "a" * 257, "é" * 128, "é" * 129, "😀" * 64, "😀" * 65, "\ud800", "ok\x85"]),
)


@settings(max_examples=400, deadline=None)
@given(values=st.lists(_TRICKY, max_size=6))
def test_a_batch_of_identifiers_passes_exactly_when_each_one_does(values: list[str]) -> None:
    """`all_identifiers` (CheckEntitlements' one check for all its ids) agrees with `identifier_problem` on each."""
    assert all_identifiers(values) == all(identifier_problem(value) is None for value in values)
