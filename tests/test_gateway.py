"""The webhook gateway end to end: real Valkey, the real gateway on a free port, real HTTP requests.

Every payload from the Xsolla fact sheet (tests/fixtures/xsolla, verbatim) is signed over its exact file bytes,
posted, and read back from the event stream as the consumer would read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from types import MappingProxyType
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from core.connections import RedisClient
from core.eventlog import AppendResult, partition_for
from core.keys import EventKeys
from core.logs import user_ref
from entitlements.v1 import events_pb2 as ev
from server.embedded import EmbeddedRedis
from tests.helpers.gateway import (
    DEFAULT_PROJECT,
    PROJECT,
    PROJECT_SECRET,
    SECRET,
    GatewayFactory,
    StoredEvent,
    fixture,
    gateway_settings,
    post,
    running_gateway,
    send,
    signed,
    stored_events,
    xsolla_settings,
)
from tests.helpers.services import data_keys
from tests.helpers.stores import StoreUnderTest, client_for
from tests.helpers.waiting import eventually
from tools.cluster import LocalCluster
from webhook_gateway import Gateway


@pytest.fixture
async def gateway_factory(redis_server: StoreUnderTest) -> AsyncIterator[GatewayFactory]:
    """Starts gateways on the test's Valkey with `gateway_settings(**overrides)`; stops them all afterwards."""
    started: list[Gateway] = []

    async def start(**overrides: Any) -> Gateway:
        kwargs = {key: overrides.pop(key) for key in ("event_sink", "user_directory") if key in overrides}
        secrets = {key: overrides.pop(key) for key in ("default_secret", "project_secrets") if key in overrides}
        gateway = Gateway(
            gateway_settings(redis_url=redis_server.url, **overrides), xsolla_settings(**secrets), **kwargs
        )
        await gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in reversed(started):
        await gateway.stop()


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> Gateway:
    """A gateway with the default test settings."""
    return await gateway_factory()


async def only_event(redis_client: RedisClient, partitions: int = 1) -> StoredEvent:
    """The one entry in the event log."""
    events = await stored_events(redis_client, partitions=partitions)
    assert len(events) == 1, events
    return events[0]


async def nothing_stored(redis_client: RedisClient) -> bool:
    """True when the gateway wrote nothing at all to Redis (no stream entry, no dedup key)."""
    return await data_keys(redis_client) == 0


@contextlib.contextmanager
def captured_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every log line emitted inside the block, at every level (the suite otherwise logs warnings only)."""
    previous = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(wrapper_class=previous)


def error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


async def metric_samples(
    http: aiohttp.ClientSession, gateway: Gateway
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The gateway's /metrics, as {(sample name, sorted labels): value}."""
    async with http.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics") as response:
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# --- every payload type -----------------------------------------------------------------------------------------

# (fixture, secret, event type, event id, project, user id, sandbox)
STORED_PAYLOADS = [
    (
        "order_paid_combined",
        PROJECT_SECRET,
        ev.EVENT_TYPE_ORDER_PAID,
        "xsolla:308077:order:689810880:paid",
        308077,
        "a1b2c3d4-0000-4000-8000-019fb6caa51e",
        True,
    ),
    (
        "order_paid_separate",
        SECRET,
        ev.EVENT_TYPE_ORDER_PAID,
        "xsolla:310000:order:1:paid",
        DEFAULT_PROJECT,
        "id_xsolla_login_1",
        False,
    ),
    (
        "order_canceled",
        SECRET,
        ev.EVENT_TYPE_ORDER_CANCELED,
        "xsolla:310000:order:1:canceled",
        DEFAULT_PROJECT,
        "id_xsolla_login_1",
        False,
    ),
    (
        "payment",
        PROJECT_SECRET,
        ev.EVENT_TYPE_PAYMENT,
        "xsolla:308077:txn:2103276197:payment",
        308077,
        "a1b2c3d4-0000-4000-8000-019fad89ee91",
        True,
    ),
    ("refund", SECRET, ev.EVENT_TYPE_REFUND, "xsolla:310000:txn:1:refund", DEFAULT_PROJECT, "1234567", True),
    (
        "create_subscription",
        SECRET,
        ev.EVENT_TYPE_SUBSCRIPTION_CREATED,
        "xsolla:18404:sub:10:create_subscription:plan=b5dac9c8"
        ":date_create=2014-09-22T15:25:25Z:date_next_charge=2015-01-22T15:25:25Z",
        18404,
        "1234567",
        False,
    ),
    (
        "update_subscription",
        SECRET,
        ev.EVENT_TYPE_SUBSCRIPTION_UPDATED,
        "xsolla:18404:sub:10:update_subscription:plan=b5dac9c8:date_next_charge=2015-01-22T15:25:25Z",
        18404,
        "1234567",
        False,
    ),
    (
        "cancel_subscription",
        SECRET,
        ev.EVENT_TYPE_SUBSCRIPTION_CANCELED,
        "xsolla:310000:sub:10:cancel_subscription:plan=1:date_create=2014-09-22T15:25:25Z:date_end=2015-01-22T15:25:25Z",
        DEFAULT_PROJECT,
        "1234567",
        False,
    ),
    (
        "non_renewal_subscription",
        SECRET,
        ev.EVENT_TYPE_SUBSCRIPTION_NON_RENEWING,
        "xsolla:12345:sub:10:non_renewal_subscription:plan=a1bcd2e3"
        ":date_create=2014-12-22T11:25:25Z:date_next_charge=2015-01-22T15:25:25Z",
        12345,
        "1234567",
        False,
    ),
]


@pytest.mark.parametrize(
    ("name", "secret", "event_type", "event_id", "project", "user_id", "sandbox"),
    STORED_PAYLOADS,
    ids=[row[0] for row in STORED_PAYLOADS],
)
async def test_fact_sheet_payload_is_stored_as_its_event(
    gateway: Gateway,
    http: aiohttp.ClientSession,
    redis_client: aioredis.Redis,
    name: str,
    secret: str,
    event_type: ev.EventType.ValueType,
    event_id: str,
    project: int,
    user_id: str,
    sandbox: bool,
) -> None:
    """Each stored fact-sheet payload answers 204 with no body and becomes one event with its raw body."""
    body = fixture(name)
    before_ns = time.time_ns()
    answer = await send(http, gateway.url, body, secret)
    assert (answer.status, answer.body) == (204, b"")
    stored = await only_event(redis_client)
    event = stored.event
    assert (event.type, event.event_id, event.project_id, event.user_id, event.sandbox) == (
        event_type,
        event_id,
        project,
        user_id,
        sandbox,
    )
    assert event.provider == "xsolla"
    assert event.notification_type == json.loads(body)["notification_type"]
    assert before_ns <= event.received_at.ToNanoseconds() <= time.time_ns()
    assert stored.raw == body
    assert stored.type_name == ev.EventType.Name(event_type)


async def test_combined_order_paid_carries_lines_and_billing_transaction(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """Combined mode: the order takes billing.transaction.id and billing.settings.project_id."""
    assert (await send(http, gateway.url, fixture("order_paid_combined"), PROJECT_SECRET)).status == 204
    order = (await only_event(redis_client)).event.order
    assert (order.order_id, order.status, order.currency, order.amount, order.invoice_id, order.transaction_id) == (
        "689810880",
        "paid",
        "USD",
        "1.9900",
        "2105129134",
        "2105129134",
    )
    assert [(line.sku, line.type, line.quantity, line.amount) for line in order.lines] == [
        ("artifact_centaurs_axe", "virtual_good", 1, "1.9900")
    ]


async def test_separate_order_paid_keeps_every_line_as_sent(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """Separate mode: bundle and currency lines are recorded, "[null]" amounts become empty, no transaction."""
    assert (await send(http, gateway.url, fixture("order_paid_separate"))).status == 204
    order = (await only_event(redis_client)).event.order
    assert [(line.sku, line.type, line.quantity, line.amount, line.is_pre_order) for line in order.lines] == [
        ("virtual-good-item_test", "virtual_good", 3, "1000", False),
        ("virtual-good-item_test_bundle", "bundle", 1, "1000", False),
        ("gold", "virtual_currency", 1500, "", False),
    ]
    assert (order.order_id, order.amount, order.currency, order.invoice_id, order.transaction_id) == (
        "1",
        "2000",
        "sku_currency",
        "1",
        "",
    )


async def test_payment_and_refund_carry_their_transaction(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """payment and refund become TransactionEvents with amounts, refund code and informational lines."""
    assert (await send(http, gateway.url, fixture("payment"), PROJECT_SECRET)).status == 204
    assert (await send(http, gateway.url, fixture("refund"))).status == 204
    payment, refund = (stored.event.transaction for stored in await stored_events(redis_client))
    assert (payment.transaction_id, payment.amount, payment.currency, payment.refund_code) == (
        "2103276197",
        "1.99",
        "USD",
        0,
    )
    assert (refund.transaction_id, refund.external_id, refund.amount, refund.currency) == ("1", "1", "200", "USD")
    assert (refund.refund_code, refund.refund_reason, refund.subscription_id) == (1, "Fraud", "10")
    assert [(line.sku, line.quantity) for line in refund.lines] == [("test_item1", 1)]


async def test_partial_refunds_of_one_transaction_are_each_kept_once(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """A retried partial_refund is a duplicate; a second, different partial refund of the transaction is not."""
    first = fixture("partial_refund")
    second = first.replace(b'"reason":"Fraud"', b'"reason":"Second partial refund"')
    for body in (first, first, second):
        assert (await send(http, gateway.url, body)).status == 204
    events = [stored.event for stored in await stored_events(redis_client)]
    assert [event.type for event in events] == [ev.EVENT_TYPE_PARTIAL_REFUND] * 2
    assert all(event.event_id.startswith("xsolla:310000:txn:1:partial_refund:") for event in events)
    assert events[0].event_id != events[1].event_id


async def test_subscription_fields_and_dates_are_parsed(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """Subscription events carry plan, product, trial, gift flag, amount and UTC dates from ISO-8601 offsets."""
    assert (await send(http, gateway.url, fixture("create_subscription"))).status == 204
    assert (await send(http, gateway.url, fixture("non_renewal_subscription"))).status == 204
    created, non_renewing = (stored.event.subscription for stored in await stored_events(redis_client))
    assert (created.subscription_id, created.plan_id, created.product_id, created.is_gift) == (
        "10",
        "b5dac9c8",
        "Demo Product",
        True,
    )
    assert (created.trial_value, created.trial_unit) == (90, "day")
    assert created.date_create.ToJsonString() == "2014-09-22T15:25:25Z"
    assert created.date_next_charge.ToJsonString() == "2015-01-22T15:25:25Z"
    assert not created.HasField("date_end")
    assert (non_renewing.amount, non_renewing.currency, non_renewing.plan_id) == ("0.03", "USD", "a1bcd2e3")


async def test_subscription_renewal_is_a_new_event_but_its_retry_is_not(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """update_subscription dedups on subscription, plan and dates: a renewal (new date) is stored again."""
    body = fixture("update_subscription")
    renewed = body.replace(b"2015-01-22T19:25:25+04:00", b"2015-02-22T19:25:25+04:00")
    for payload in (body, body, renewed, renewed):
        assert (await send(http, gateway.url, payload)).status == 204
    assert len(await stored_events(redis_client)) == 2


async def test_user_validation_is_answered_and_not_stored(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """user_validation (both fact-sheet payloads) answers 204 with no body and stores nothing."""
    for name, secret in (("user_validation", SECRET), ("user_validation_sandbox", PROJECT_SECRET)):
        answer = await send(http, gateway.url, fixture(name), secret)
        assert (answer.status, answer.body) == (204, b"")
    assert await nothing_stored(redis_client)


async def test_user_search_answers_the_user_and_stores_nothing(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """user_search answers 200 with Xsolla's user object (allow_all: the public id is the user id)."""
    answer = await send(http, gateway.url, fixture("user_search"))
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json() == {"user": {"id": "1234567", "public_id": "1234567"}}
    assert await nothing_stored(redis_client)


async def test_unknown_type_is_stored_raw_counted_and_logged(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """A type this version does not know is stored (raw body, hash id), counted and logged, never dropped."""
    body = b'{"notification_type":"brand_new_thing","settings":{"project_id":18404},"user":{"id":"u-1"},"x":[1,2]}'
    with captured_logs() as logs:
        assert (await send(http, gateway.url, body)).status == 204
        assert (await send(http, gateway.url, body)).status == 204
    stored = await only_event(redis_client)
    assert stored.event.type == ev.EVENT_TYPE_UNKNOWN
    assert stored.event.event_id == f"xsolla:18404:raw:{hashlib.sha256(body).hexdigest()}"
    assert (stored.event.notification_type, stored.event.user_id, stored.raw) == ("brand_new_thing", "u-1", body)
    assert stored.event.WhichOneof("payload") is None
    lines = [line for line in logs if line["event"] == "webhook"]
    assert [(line["log_level"], line.get("unknown_type")) for line in lines] == [("warning", True)] * 2
    samples = await metric_samples(http, gateway)
    assert samples[("gateway_unknown_types_total", (("type", "other"),))] == 1
    assert samples[("gateway_webhooks_total", (("result", "stored"), ("type", "other")))] == 1
    assert samples[("gateway_webhooks_total", (("result", "duplicate"), ("type", "other")))] == 1


async def test_documented_but_uninterpreted_type_is_stored_with_its_own_label(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """user_balance_operation (documented, not interpreted) is stored as UNKNOWN and labelled by its name."""
    body = b'{"notification_type":"user_balance_operation","user":{"id":"42"},"transaction":{"dry_run":1}}'
    assert (await send(http, gateway.url, body)).status == 204
    stored = await only_event(redis_client)
    assert (stored.event.type, stored.event.user_id, stored.event.sandbox) == (ev.EVENT_TYPE_UNKNOWN, "42", True)
    samples = await metric_samples(http, gateway)
    assert samples[("gateway_unknown_types_total", (("type", "user_balance_operation"),))] == 1


# --- projects and secrets ---------------------------------------------------------------------------------------


async def test_project_in_url_selects_its_secret_and_names_the_project(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """POST <path>/308077 verifies with project 308077's secret and records that project."""
    body = fixture("order_paid_separate")
    url = f"{gateway.url}/{PROJECT}"
    rejected = await send(http, url, body, SECRET)
    assert (rejected.status, rejected.json()) == (400, error("INVALID_SIGNATURE", "Invalid signature"))
    assert (await send(http, url, body, PROJECT_SECRET)).status == 204
    stored = await only_event(redis_client)
    assert (stored.event.project_id, stored.event.event_id) == (PROJECT, "xsolla:308077:order:1:paid")


async def test_unconfigured_project_in_url_falls_back_to_the_default_secret(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """A project without a secret of its own is verified with the default secret."""
    assert (await send(http, f"{gateway.url}/777", fixture("order_paid_separate"))).status == 204
    assert (await only_event(redis_client)).event.project_id == 777


async def test_project_in_body_selects_its_secret(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """settings.project_id (billing.settings in combined mode) picks the project's secret, not the default."""
    for name in ("payment", "order_paid_combined"):
        answer = await send(http, gateway.url, fixture(name), SECRET)
        assert (answer.status, answer.json()) == (400, error("INVALID_SIGNATURE", "Invalid signature"))
    assert await nothing_stored(redis_client)


async def test_rotation_accepts_both_secrets_of_a_project(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """A project listed with two secrets accepts webhooks signed with either."""
    gateway = await gateway_factory(project_secrets=MappingProxyType({PROJECT: ("old-secret", "new-secret")}))
    assert (await send(http, gateway.url, fixture("payment"), "old-secret")).status == 204
    assert (await send(http, gateway.url, fixture("order_paid_combined"), "new-secret")).status == 204
    assert len(await stored_events(redis_client)) == 2


async def test_without_default_secret_a_projects_own_secret_decides_a_body_naming_none(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """With only per-project secrets, an unconfigured secret is refused; a project's own secret signing a body that
    names no project makes it that project's webhook."""
    gateway = await gateway_factory(default_secret=None)
    with captured_logs() as logs:
        answer = await send(http, gateway.url, fixture("refund"))
        routed = await send(http, f"{gateway.url}/777", fixture("refund"), PROJECT_SECRET)
    for refused in (answer, routed):
        assert (refused.status, refused.json()) == (400, error("INVALID_SIGNATURE", "Invalid signature"))
    # No configured secret signed the first, so its body is never read; no secret at all is one of project 777's.
    assert [line.get("reason") for line in logs if line["event"] == "webhook"] == [
        "Invalid signature",
        "no secret is configured for project 777",
    ]
    assert await nothing_stored(redis_client)
    assert (await send(http, gateway.url, fixture("refund"), PROJECT_SECRET)).status == 204
    assert (await only_event(redis_client)).event.project_id == PROJECT


# --- signature errors -------------------------------------------------------------------------------------------

_BODY = fixture("order_paid_combined")
_GOOD = signed(_BODY, PROJECT_SECRET)
_FORMAT = "Authorization header is not of the form 'Signature <40 lower-case hex digits>'"


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "Authorization header not found"),
        ("", _FORMAT),
        (_GOOD.upper().replace("SIGNATURE", "Signature"), _FORMAT),
        (_GOOD.replace("Signature", "signature"), _FORMAT),
        (_GOOD.replace("Signature ", "Signature  "), _FORMAT),
        (_GOOD[:-1], _FORMAT),
        (_GOOD + "0", _FORMAT),
        (_GOOD.split(" ")[1], _FORMAT),
        ("Bearer " + _GOOD.split(" ")[1], _FORMAT),
        (signed(_BODY, SECRET), "Invalid signature"),
        (signed(_BODY, "some-other-secret"), "Invalid signature"),
        (signed(_BODY + b" ", PROJECT_SECRET), "Invalid signature"),
        (signed(json.dumps(json.loads(_BODY)).encode(), PROJECT_SECRET), "Invalid signature"),
        ("Signature " + hashlib.sha1(_BODY).hexdigest(), "Invalid signature"),  # noqa: S324 - Xsolla's scheme
        ("Signature " + "0" * 40, "Invalid signature"),
    ],
    ids=[
        "missing",
        "empty",
        "upper-case-hex",
        "lower-case-scheme",
        "two-spaces",
        "39-hex",
        "41-hex",
        "no-scheme",
        "bearer",
        "default-secret-for-a-project-with-its-own",
        "wrong-secret",
        "other-bytes",
        "re-serialized-json",
        "no-secret",
        "zeros",
    ],
)
async def test_bad_signature_is_400_invalid_signature_and_stores_nothing(
    gateway: Gateway,
    http: aiohttp.ClientSession,
    redis_client: aioredis.Redis,
    authorization: str | None,
    message: str,
) -> None:
    """Missing, malformed or wrong signatures answer 400 INVALID_SIGNATURE with Xsolla's body; nothing stored."""
    answer = await post(http, gateway.url, _BODY, authorization=authorization)
    assert (answer.status, answer.json()) == (400, error("INVALID_SIGNATURE", message))
    assert answer.headers["Content-Type"].startswith("application/json")
    assert await nothing_stored(redis_client)


async def test_signature_is_checked_before_the_body_is_judged(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """An unparsable body with a wrong signature is an INVALID_SIGNATURE, not an INVALID_PARAMETER."""
    answer = await post(http, gateway.url, b"{not json", authorization=signed(b"{not json", "wrong"))
    assert (answer.status, answer.json()["error"]["code"]) == (400, "INVALID_SIGNATURE")
    assert await nothing_stored(redis_client)


# --- invalid parameters -----------------------------------------------------------------------------------------


def _edit(name: str, change: Callable[[dict[str, Any]], object]) -> bytes:
    document = json.loads(fixture(name))
    change(document)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "The body is not a JSON object"),
        (b"[1, 2]", "The body is not a JSON object"),
        (b"\xff\xfe{}", "The body is not a JSON object"),
        (b'{"notification_type": "order_paid", "x": NaN}', "The body is not a JSON object"),
        (b"", "The body is not a JSON object"),
        (b'{"settings": {}}', "notification_type is required (a string)"),
        (b'{"notification_type": 5}', "notification_type is required (a string)"),
        (
            _edit("order_paid_separate", lambda d: d["order"].pop("id")),
            "order.id is required (a non-empty string or an integer)",
        ),
        (_edit("order_paid_separate", lambda d: d.pop("order")), "order is required (an object)"),
        (
            _edit("order_paid_separate", lambda d: d["user"].pop("external_id")),
            "user.external_id is required (a non-empty string or an integer)",
        ),
        (_edit("order_paid_separate", lambda d: d.pop("items")), "items is required (a list)"),
        (_edit("order_canceled", lambda d: d.update(items={"sku": "x"})), "items is required (a list)"),
        (
            _edit("order_paid_separate", lambda d: d["items"][1].update(quantity=0)),
            "items[1].quantity must be an integer between 1 and 1,000,000,000,000",
        ),
        (
            _edit("order_paid_separate", lambda d: d["items"][2].update(quantity="lots")),
            "items[2].quantity must be an integer between 1 and 1,000,000,000,000",
        ),
        # What the service could never apply is refused at the door (core.limits), never acknowledged.
        (
            _edit("order_paid_separate", lambda d: d["items"][1].update(quantity=10**12 + 1)),
            "items[1].quantity must be an integer between 1 and 1,000,000,000,000",
        ),
        (
            _edit("order_paid_separate", lambda d: d["user"].update(external_id="p" * 257)),
            "user.external_id must be at most 256 bytes",
        ),
        (
            _edit("order_paid_separate", lambda d: d["user"].update(external_id="é" * 129)),
            "user.external_id must be at most 256 bytes",
        ),
        (
            _edit("order_paid_separate", lambda d: d["user"].update(external_id="player\u0085one")),
            "user.external_id must not contain control characters",
        ),
        (
            _edit("order_paid_separate", lambda d: d["user"].update(external_id="player\nname")),
            "user.external_id must not contain control characters",
        ),
        (
            _edit("order_paid_separate", lambda d: d["items"][0].update(sku="gold\u009f")),
            "items[0].sku must not contain control characters",
        ),
        (
            _edit("order_paid_separate", lambda d: d["order"].update(id=10**300)),
            "order.id must be at most 256 bytes",
        ),
        (
            _edit("refund", lambda d: d["transaction"].update(id="t\x7f")),
            "transaction.id must not contain control characters",
        ),
        (
            _edit("cancel_subscription", lambda d: d["subscription"].update(subscription_id="s" * 300)),
            "subscription.subscription_id must be at most 256 bytes",
        ),
        (
            _edit("order_paid_separate", lambda d: d["items"][0].pop("sku")),
            "items[0].sku is required (a non-empty string or an integer)",
        ),
        (_edit("order_paid_separate", lambda d: d["items"].append("gold")), "items[3] must be an object"),
        (
            _edit("refund", lambda d: d["transaction"].pop("id")),
            "transaction.id is required (a non-empty string or an integer)",
        ),
        (_edit("refund", lambda d: d["user"].pop("id")), "user.id is required (a non-empty string or an integer)"),
        (_edit("refund", lambda d: d.pop("transaction")), "transaction is required (an object)"),
        (
            _edit("cancel_subscription", lambda d: d["subscription"].pop("subscription_id")),
            "subscription.subscription_id is required (a non-empty string or an integer)",
        ),
        (
            _edit("cancel_subscription", lambda d: d["user"].update(id="")),
            "user.id is required (a non-empty string or an integer)",
        ),
        (
            _edit("update_subscription", lambda d: d["subscription"].update(date_next_charge="next tuesday")),
            "subscription.date_next_charge must be an ISO-8601 date",
        ),
        (
            _edit("update_subscription", lambda d: d["settings"].update(project_id="abc")),
            "settings.project_id must be a non-negative integer",
        ),
        (
            _edit("user_validation", lambda d: d["user"].pop("id")),
            "user.id is required (a non-empty string or an integer)",
        ),
        (
            _edit("user_search", lambda d: d["user"].pop("public_id")),
            "user.public_id is required (a non-empty string or an integer)",
        ),
    ],
)
async def test_unusable_signed_body_is_400_invalid_parameter_naming_the_field(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis, body: bytes, message: str
) -> None:
    """A correctly signed but unusable body answers 400 INVALID_PARAMETER naming the field; nothing stored."""
    answer = await send(http, gateway.url, body)
    assert (answer.status, answer.json()) == (400, error("INVALID_PARAMETER", message))
    assert await nothing_stored(redis_client)


@pytest.mark.parametrize(
    ("change", "check"),
    [
        (lambda d: d["order"].update(id="689810880"), lambda e: e.event_id == "xsolla:308077:order:689810880:paid"),
        (lambda d: d["items"][0].update(quantity="2"), lambda e: e.order.lines[0].quantity == 2),
        (lambda d: d["billing"]["transaction"].pop("dry_run"), lambda e: e.sandbox),  # order.mode still says so
        (
            lambda d: (d["order"].update(mode="default"), d["billing"]["transaction"].pop("dry_run")),
            lambda e: not e.sandbox,
        ),
        (lambda d: d["billing"]["settings"].update(project_id="308077"), lambda e: e.project_id == PROJECT),
        (lambda d: d["items"][0].update(is_free=1, is_bonus=True), lambda e: e.order.lines[0].is_free),
        (lambda d: d["order"].update(id="a:b/c"), lambda e: e.event_id == "xsolla:308077:order:a%3Ab%2Fc:paid"),
    ],
    ids=["string-order-id", "string-quantity", "mode-sandbox", "real", "string-project", "flags", "quoted-id"],
)
async def test_liberal_where_xsolla_examples_vary(
    gateway: Gateway,
    http: aiohttp.ClientSession,
    redis_client: aioredis.Redis,
    change: Callable[[dict[str, Any]], object],
    check: Callable[[ev.WebhookEvent], bool],
) -> None:
    """Ids and numbers as strings or integers, dry_run absent or 1, and odd characters in ids are accepted."""
    body = _edit("order_paid_combined", change)
    assert (await send(http, gateway.url, body, PROJECT_SECRET)).status == 204
    assert check((await only_event(redis_client)).event)


# --- dedup at the door ------------------------------------------------------------------------------------------


async def test_duplicate_delivery_answers_204_and_adds_nothing(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """The same order_paid twice: both 204, one entry, the second counted as a duplicate."""
    body = fixture("order_paid_combined")
    for _ in range(2):
        answer = await send(http, gateway.url, body, PROJECT_SECRET)
        assert (answer.status, answer.body) == (204, b"")
    await only_event(redis_client)
    samples = await metric_samples(http, gateway)
    assert samples[("gateway_webhooks_total", (("result", "stored"), ("type", "order_paid")))] == 1
    assert samples[("gateway_webhooks_total", (("result", "duplicate"), ("type", "order_paid")))] == 1


async def test_dedup_key_is_kept_for_the_configured_window(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """The event id is remembered for 72 hours by default (Xsolla retries for up to 48)."""
    assert (await send(http, gateway.url, fixture("order_paid_separate"))).status == 204
    ttl_ms = int(await redis_client.pttl(EventKeys(310000, 0).dedup("xsolla:310000:order:1:paid")))
    assert 72 * 3600 * 1000 - 60_000 < ttl_ms <= 72 * 3600 * 1000


@pytest.mark.slow
async def test_same_order_paid_fifty_times_at_once_is_stored_once(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """Fifty concurrent deliveries of one order_paid: all 204, exactly one stream entry."""
    # Redis's bound as deployed (2 s): fifty writes at once on a loaded machine outlast the tests' usual 0.5 s, and a
    # 503 (Xsolla retries it) is not what this test is about.
    gateway = await gateway_factory(redis_timeout_s=2.0, durability_timeout_ms=1000)
    body = fixture("order_paid_combined")
    answers = await asyncio.gather(*(send(http, gateway.url, body, PROJECT_SECRET) for _ in range(50)))
    assert [answer.status for answer in answers] == [204] * 50
    await only_event(redis_client)
    samples = await metric_samples(http, gateway)
    assert samples[("gateway_webhooks_total", (("result", "duplicate"), ("type", "order_paid")))] == 49


async def test_payment_and_order_paid_of_one_purchase_are_two_events_but_one_order(
    gateway: Gateway, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """Separate mode: payment and order_paid are both stored; only the order event carries lines to grant."""
    assert (await send(http, gateway.url, fixture("payment"), PROJECT_SECRET)).status == 204
    assert (await send(http, gateway.url, fixture("order_paid_combined"), PROJECT_SECRET)).status == 204
    events = [stored.event for stored in await stored_events(redis_client)]
    assert [event.WhichOneof("payload") for event in events] == ["transaction", "order"]


async def test_events_are_partitioned_by_player(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """With several partitions, each event lands on its player's partition stream."""
    gateway = await gateway_factory(event_partitions=4)

    def order_of_player(number: int) -> bytes:
        document = json.loads(fixture("order_paid_separate"))
        document["order"]["id"] = number
        document["user"]["external_id"] = f"p{number}"
        return json.dumps(document).encode()

    for body in map(order_of_player, range(12)):
        assert (await send(http, gateway.url, body)).status == 204
    events = await stored_events(redis_client, partitions=4)
    assert len(events) == 12
    assert all(stored.partition == partition_for(stored.event.user_id, 4) for stored in events)
    assert len({stored.partition for stored in events}) > 1


# --- Redis down, unexpected errors ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_redis_down_answers_503_and_the_retry_is_stored_once_it_is_back(
    gateway: Gateway, http: aiohttp.ClientSession, embedded_server: EmbeddedRedis, redis_client: aioredis.Redis
) -> None:
    """Redis stopped: order_paid gets 503 (Xsolla retries, never a 4xx) and /readyz 503; back up: stored once."""
    body = fixture("order_paid_combined")
    await embedded_server.stop()
    answer = await send(http, gateway.url, body, PROJECT_SECRET)
    assert (answer.status, answer.json()) == (
        503,
        error("SERVER_ERROR", "The notification could not be stored; retry later"),
    )
    async with http.get(gateway.url.replace(gateway.path, "/readyz")) as response:
        assert response.status == 503
    await embedded_server.start()
    for _ in range(2):
        assert (await send(http, gateway.url, body, PROJECT_SECRET)).status == 204
    await only_event(redis_client)
    async with http.get(gateway.url.replace(gateway.path, "/readyz")) as response:
        assert (response.status, await response.json()) == (200, {"status": "ready"})
    samples = await metric_samples(http, gateway)
    assert samples[("gateway_webhooks_total", (("result", "unavailable"), ("type", "order_paid")))] == 1


@pytest.mark.slow
async def test_a_dead_primary_answers_503_and_the_retry_is_stored_once_its_replica_took_over(
    private_cluster: LocalCluster, http: aiohttp.ClientSession
) -> None:
    """On a cluster, the primary of the event stream killed: order_paid gets 503 (Xsolla retries); once its replica
    is promoted and has a replica of its own (the dead node restarted: durability `replicas`, what auto decides on a
    cluster with replicas), the same gateway stores the retry, once."""
    body = fixture("order_paid_combined")
    primary = private_cluster.primary_for(EventKeys(PROJECT, 0).stream)
    (replica,) = private_cluster.replicas_of(primary)
    redis = client_for(private_cluster.url, cluster=True)
    try:
        await redis.initialize()  # its seed may be the primary killed below: it learns the other nodes now
        async with running_gateway(gateway_settings(redis_url=private_cluster.url)) as gateway:
            # The replica holds back until the 503 was seen: a failover takes about as long as the append's retries.
            with replica.client() as node:
                node.config_set("cluster-replica-no-failover", "yes")
            private_cluster.kill(primary)
            answer = await send(http, gateway.url, body, PROJECT_SECRET)
            assert (answer.status, answer.json()) == (
                503,
                error("SERVER_ERROR", "The notification could not be stored; retry later"),
            )
            with replica.client() as node:
                node.config_set("cluster-replica-no-failover", "no")
            await private_cluster.wait_failover_async(primary)
            refused = 1
            private_cluster.restart(primary)  # back as the promoted node's replica
            await asyncio.to_thread(private_cluster.wait_healthy)

            async def stored() -> bool:
                nonlocal refused
                status = (await send(http, gateway.url, body, PROJECT_SECRET)).status
                assert status in (204, 503)
                refused += status == 503
                return status == 204

            await eventually(stored, timeout_s=20.0, what="the retry to be stored")
            assert (await send(http, gateway.url, body, PROJECT_SECRET)).status == 204
            samples = await metric_samples(http, gateway)
        assert samples[("gateway_webhooks_total", (("result", "unavailable"), ("type", "order_paid")))] == refused
        await only_event(redis)
    finally:
        await redis.aclose()


class _BrokenSink:
    """An event log whose append fails with a bug-like exception."""

    async def append(self, event: ev.WebhookEvent, raw: bytes) -> AppendResult:
        raise RuntimeError("secret internals: Traceback (most recent call last)")


async def test_unexpected_error_is_a_generic_500_logged_with_its_traceback(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A bug while handling answers 500 with Xsolla's shape and no details; the log line has the traceback."""
    gateway = await gateway_factory(event_sink=_BrokenSink())
    with captured_logs() as logs:
        answer = await send(http, gateway.url, fixture("order_paid_separate"))
    assert (answer.status, answer.json()) == (500, error("SERVER_ERROR", "Internal error"))
    assert b"Traceback" not in answer.body
    assert b"secret internals" not in answer.body
    (line,) = [line for line in logs if line["event"] == "webhook"]
    assert (line["log_level"], line["result"], line["status"]) == ("error", "error", 500)
    assert isinstance(line["exc_info"], RuntimeError)


# --- operations: health, metrics, logs --------------------------------------------------------------------------


async def test_healthz_and_readyz(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    """/healthz answers while the process runs, /readyz while Redis answers."""
    base = gateway.url.removesuffix(gateway.path)
    async with http.get(base + "/healthz") as response:
        assert (response.status, await response.json()) == (200, {"status": "ok"})
    async with http.get(base + "/readyz") as response:
        assert (response.status, await response.json()) == (200, {"status": "ready"})


async def test_metrics_count_results_and_latency_by_type(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    """/metrics (own port) counts webhooks by type and result, and observes latency by type."""
    await send(http, gateway.url, fixture("order_paid_separate"))
    await send(http, gateway.url, fixture("order_paid_separate"), "wrong")
    await send(http, gateway.url, fixture("user_validation"))
    samples = await metric_samples(http, gateway)
    assert samples[("gateway_webhooks_total", (("result", "stored"), ("type", "order_paid")))] == 1
    assert samples[("gateway_webhooks_total", (("result", "invalid_signature"), ("type", "unverified")))] == 1
    assert samples[("gateway_webhooks_total", (("result", "answered"), ("type", "user_validation")))] == 1
    assert samples[("gateway_webhook_duration_seconds_count", (("type", "order_paid"),))] == 1


async def test_one_log_line_per_webhook_without_secrets_signatures_or_player_ids(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """Each webhook logs one line with type, project, result, status, duration, event id and a hashed player."""
    body = fixture("order_paid_combined")
    with captured_logs() as logs:
        await send(http, gateway.url, body, PROJECT_SECRET)
        await send(http, gateway.url, body, "wrong-secret")
    stored, rejected = (line for line in logs if line["event"] == "webhook")
    assert {key: stored[key] for key in ("type", "project", "result", "status", "event_id", "user")} == {
        "type": "order_paid",
        "project": PROJECT,
        "result": "stored",
        "status": 204,
        "event_id": "xsolla:308077:order:689810880:paid",
        "user": user_ref("a1b2c3d4-0000-4000-8000-019fb6caa51e"),
    }
    assert stored["duration_ms"] >= 0
    assert (rejected["result"], rejected["status"], rejected["reason"]) == (
        "invalid_signature",
        400,
        "Invalid signature",
    )
    text = repr(logs)
    for secret_or_signature in (PROJECT_SECRET, SECRET, signed(body, PROJECT_SECRET)[10:], "a1b2c3d4-0000-4000-8000"):
        assert secret_or_signature not in text


async def test_settings_repr_hides_secrets() -> None:
    """Secrets never show in the settings' repr (which might end up in a log)."""
    text = repr(gateway_settings(user_directory_token="directory-token"))
    for secret in (SECRET, PROJECT_SECRET, "directory-token"):
        assert secret not in text


async def test_gateway_shares_a_callers_redis_client_and_registry(
    redis_server: StoreUnderTest, http: aiohttp.ClientSession, redis_client: aioredis.Redis
) -> None:
    """Embedded in another process: the caller's Redis client and registry are used, and not closed on stop."""
    registry = CollectorRegistry()
    shared = redis_server.client()
    try:
        gateway = Gateway(
            gateway_settings(metrics_port=None, redis_cluster=redis_server.cluster),
            xsolla_settings(),
            redis=shared,
            registry=registry,
        )
        await gateway.start()
        try:
            assert gateway.metrics_port is None
            assert (await send(http, gateway.url, fixture("order_paid_separate"))).status == 204
        finally:
            await gateway.stop()
        assert await shared.ping()
        assert b'gateway_webhooks_total{result="stored",type="order_paid"} 1.0' in generate_latest(registry)
        await only_event(redis_client)
    finally:
        await shared.aclose()
