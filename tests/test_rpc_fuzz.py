"""Property-based fuzzing of every RPC of the real service over gRPC: arbitrary bytes as the request, arbitrary
values in every field of the request message, and callers without a valid key.

Properties, each over a bounded number of examples per RPC against one running service (its Redis the test's
Valkey, GetOrderStatus following orders at a local Xsolla simulator, so nothing leaves loopback):

- no request is ever answered UNKNOWN or INTERNAL; every answer is one the RPC documents, and an
  INVALID_ARGUMENT names a field of the request (or the request as a whole);
- bytes that do not decode as the request message are INVALID_ARGUMENT, and anything but OK writes nothing;
- a caller without a valid API key gets UNAUTHENTICATED, whatever it sends;
- a key bound to one project gets PERMISSION_DENIED for any request naming another, whatever else it holds, and
  a request for a project the service does not serve is INVALID_ARGUMENT; neither writes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from core.connections import RedisClient
from core.logs import user_ref
from providers.xsolla import OrderSettings
from server.app import Service
from server.auth import hash_key, parse_api_keys
from server.config import Settings
from server.tracking.settings import TrackingSettings
from server.validation import encode_page_token
from tests.helpers.raw import METHODS, SERVICE, Outcome, RawChannel, bearer, raw_channel
from tests.helpers.services import API_KEYS, READER_KEY, WRITER_KEY, ServiceFactory, served, store_changes
from tests.helpers.stores import StoreUnderTest, all_keys
from xsolla_simulator import XsollaSimulator
from xsolla_simulator.testing import running_simulator

PROJECT = 12345
# A second project the service serves, and the key bound to it alone.
OTHER_PROJECT = 54321
BOUND_KEY = "bound-to-other-project-0123456789"
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
StatusCode = grpc.StatusCode
# Every RPC may also be UNAVAILABLE (the store did not answer in time) or DEADLINE_EXCEEDED: on a loaded machine.
ALWAYS = frozenset({StatusCode.OK, StatusCode.INVALID_ARGUMENT, StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED})
DOCUMENTED = {
    "Grant": ALWAYS | {StatusCode.ALREADY_EXISTS, StatusCode.FAILED_PRECONDITION},
    "Revoke": ALWAYS | {StatusCode.ALREADY_EXISTS},
    "CheckEntitlement": ALWAYS,
    "CheckEntitlements": ALWAYS,
    "ListEntitlements": ALWAYS,
    "ListSubscriptions": ALWAYS,
    "ListLedger": ALWAYS,
    # The player's token rejected by Xsolla, the order unknown there, too many orders followed.
    "GetOrderStatus": ALWAYS | {StatusCode.UNAUTHENTICATED, StatusCode.NOT_FOUND, StatusCode.RESOURCE_EXHAUSTED},
    # A cursor too old or of another store or project, too many streams on the replica.
    "WatchEntitlements": ALWAYS | {StatusCode.OUT_OF_RANGE, StatusCode.RESOURCE_EXHAUSTED},
}
REQUEST_TYPES: dict[str, type[Message]] = {m.name: GetMessageClass(m.input_type) for m in SERVICE.methods}


@pytest.fixture
async def simulator() -> AsyncIterator[XsollaSimulator]:
    """Xsolla on loopback, with one order of player-1: GetOrderStatus's socket and Get order go there, never to
    Xsolla."""
    async with running_simulator(project_id=PROJECT) as sim:
        sim.create_order("player-1", [{"sku": "gold", "quantity": 1}])
        yield sim


@pytest.fixture
async def service(service_factory: ServiceFactory, redis_server: StoreUnderTest, simulator: XsollaSimulator) -> Service:
    """The service on the test's Valkey, following orders at the simulator; a stream whose request sets no
    `max_wait` ends after 50 ms, and no consumer runs (nothing writes but the calls)."""
    xsolla = OrderSettings(
        project_id=PROJECT,
        store_api=simulator.store_api_url,
        ws_url=simulator.ws_url,
        ws_connect_timeout_s=1.0,
        http_timeout_s=1.0,
    )
    return await service_factory(
        redis_url=redis_server.url,
        api_keys=API_KEYS + parse_api_keys(f"bound:{hash_key(BOUND_KEY)}:read,write:{OTHER_PROJECT}"),
        projects=served(PROJECT, OTHER_PROJECT, default=PROJECT),
        xsolla=xsolla,
        tracking=TrackingSettings(max_wait_s=0.05, poll_interval_s=0.02, grant_wait_s=0.0),
        consumer=replace(Settings().consumer, enabled=False),
    )


@pytest.fixture
async def raw(service: Service) -> AsyncIterator[RawChannel]:
    """A channel sending the request bytes as given."""
    async with raw_channel(service) as channel:
        yield channel


#: What following an order at the provider writes, whatever the stream's end: the order's lease and its upstream
#: record (both with a TTL; `server.tracking.upstream`). A stream the service accepted takes them before the provider
#: answers, so it may end NOT_FOUND or UNAUTHENTICATED (the provider's word) or DEADLINE_EXCEEDED after writing them.
_FOLLOWING = (b":order-follow:", b":order-upstream:")
#: The RPCs whose writes go through the change feed's intents on a cluster.
_FED_WRITES = frozenset({"Grant", "Revoke"})


async def store_state(service: Service, redis: RedisClient, method: str) -> int | dict[bytes, Any]:
    """What a call not answered OK must leave as it found: every write (Valkey's count of changes); for
    GetOrderStatus, every key but those of following an order, and its content (DUMP).

    Taken once the change feed's relay is idle: on a cluster an earlier example's OK write is relayed to the feed
    after its answer, and would otherwise be counted against the call that follows it."""
    if service.feed is not None:
        await service.feed.relay.flush()
    if method in _FED_WRITES and isinstance(redis, aioredis.RedisCluster):
        # On a cluster a write records its intent in the change feed before its script runs (docs/FEED.md), and a
        # write its script refuses takes the intent back: two changes, nothing changed. What is stored must be as it
        # was.
        return {key: await redis.dump(key) for key in await all_keys(redis)}
    if method != "GetOrderStatus":
        return await store_changes(redis)
    keys = [key for key in await all_keys(redis) if not any(part in key for part in _FOLLOWING)]
    return {key: await redis.dump(key) for key in keys}


def _decodes(method: str, payload: bytes) -> bool:
    try:
        REQUEST_TYPES[method].FromString(payload)
    except DecodeError:
        return False
    return True


def _check_answer(method: str, outcome: Outcome) -> None:
    """The answer is one `method` documents, never UNKNOWN or INTERNAL; INVALID_ARGUMENT names a field."""
    event(outcome.code.name)  # --hypothesis-show-statistics shows how the examples were answered
    assert outcome.code not in (StatusCode.UNKNOWN, StatusCode.INTERNAL), outcome
    assert outcome.code in DOCUMENTED[method], outcome
    if outcome.code == StatusCode.INVALID_ARGUMENT:
        named = outcome.details.split(":", 1)[0].split("[", 1)[0].split(".", 1)[0]
        fields = {field.name for field in REQUEST_TYPES[method].DESCRIPTOR.fields}
        assert named in fields | {"request"}, outcome
    assert "Traceback" not in outcome.details


# --- strategies ---------------------------------------------------------------------------------------------------

# Identifiers the calls share, so that grants, revokes, checks and listings meet on the same players and items.
COMMON = ["player-1", "player-2", "gold", "sword", "season-pass", "key-1", "key-2", "en", "1"]
NASTY = [
    "",
    " ",
    "\x00",
    "a\nb",
    "\x7f",
    "\u0085",
    "\u2028",
    "\ufeff",
    "\U0010ffff",
    " padded ",
    "{player-1}",
    "%7B",
    "é" * 128,
    "é" * 129,
    "x" * 256,
    "x" * 257,
    "Bearer x",
    "../../etc/passwd",
]
characters = st.characters(codec="utf-8")  # any code point a protobuf string can hold (not a lone surrogate)
texts = st.one_of(
    st.sampled_from(COMMON),
    st.sampled_from(NASTY),
    st.text(characters, max_size=40),
    st.text(characters, min_size=200, max_size=300),
    st.builds(lambda char, count: char * count, characters, st.integers(0, 20_000)),
)
int64s = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, -1, 2, 1_000_000, 1_000_001, 2**31, 2**53 + 1, 2**63 - 1, -(2**63)]),
)
int32s = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, -1, 15, 50, 100, 101, 500, 501]))
DAY = 86_400
durations = st.one_of(
    st.builds(Duration, seconds=int64s, nanos=int32s),
    st.builds(Duration, seconds=st.integers(-400 * DAY, 40_000 * DAY), nanos=st.integers(-(10**9), 10**9)),
    st.sampled_from(
        [
            Duration(seconds=60),
            Duration(nanos=1),
            Duration(nanos=1_000_000),
            Duration(seconds=36_500 * DAY),
            Duration(seconds=36_500 * DAY, nanos=1),
            Duration(seconds=315_576_000_000, nanos=999_999_999),  # the largest valid Duration
            Duration(seconds=-315_576_000_000, nanos=-999_999_999),
        ]
    ),
)


# GetOrderStatus's max_wait: every way to be out of range, and valid waits short enough for a test example
# (longer ones are tested in test_order_status.py).
max_waits = st.one_of(
    st.builds(Duration, seconds=st.integers(3600, 2**63 - 1), nanos=st.integers(1, 999_999_999)),  # too long
    st.builds(Duration, seconds=st.integers(-(2**63), 0), nanos=st.integers(-999_999_999, 0)),  # not positive
    st.builds(Duration, seconds=st.integers(1, 2**63 - 1), nanos=st.integers(-999_999_999, -1)),  # mixed signs
    st.builds(
        Duration, seconds=int64s, nanos=st.integers(10**9, 2**31 - 1) | st.integers(-(2**31), -(10**9))
    ),  # nanos out of range
    st.builds(Duration, nanos=st.integers(1, 50_000_000)),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), int64s, st.floats(), st.text(characters, max_size=12)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=12,
)


def _base64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _owned(sku: bytes, expired: bytes = b"false") -> str:
    """A token of player-1's shape in PROJECT whose sku and include_expired are the JSON texts given."""
    return _base64(b'{"p":%d,"u":"%s","a":%s,"x":%s}' % (PROJECT, user_ref("player-1").encode(), sku, expired))


# Nested deeper than Python's JSON parser recurses, closed or not.
nestings = st.builds(
    lambda depth, closed: b"[" * depth + b"]" * (depth if closed else 0), st.integers(1_000, 3_000), st.booleans()
)
json_texts = json_values.map(lambda value: json.dumps(value).encode())
page_tokens = st.one_of(
    texts,
    st.binary(max_size=300).map(_base64),
    json_texts.map(_base64),
    nestings.map(_base64),
    nestings.map(_owned),
    st.builds(_owned, json_texts, json_texts),
    st.builds(
        encode_page_token, st.sampled_from([PROJECT, OTHER_PROJECT]), st.sampled_from(COMMON), texts, st.booleans()
    ),
)


def _nested(
    descriptor: Descriptor, value: Callable[[FieldDescriptor], st.SearchStrategy[Any]]
) -> st.SearchStrategy[Message]:
    """A message of a request's own message field (not a Duration), each of its fields drawn by `value`."""
    return st.builds(GetMessageClass(descriptor), **{field.name: value(field) for field in descriptor.fields})


def _hostile(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    """Any value of the field's type, favouring the edges."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return st.one_of(
            st.dictionaries(texts, texts, max_size=4),
            st.dictionaries(st.text(characters, max_size=80), st.text(characters, max_size=1100), max_size=40),
        )
    if field.message_type is not None and field.message_type.full_name != Duration.DESCRIPTOR.full_name:
        return _nested(field.message_type, _hostile)  # CheckEntitlementsRequest.Check
    if field.message_type is not None:
        return durations
    by_type: dict[int, st.SearchStrategy[Any]] = {
        FieldDescriptor.TYPE_STRING: texts,
        FieldDescriptor.TYPE_INT64: int64s,
        FieldDescriptor.TYPE_INT32: int32s,
        FieldDescriptor.TYPE_ENUM: int32s,  # open enums: any int32 goes on the wire
        FieldDescriptor.TYPE_BOOL: st.booleans(),
    }
    return by_type[field.type]


def _plausible(field: FieldDescriptor, order_ids: list[str]) -> st.SearchStrategy[Any]:
    """A value a well-behaved caller might send."""
    if field.name == "order_id":
        return st.sampled_from(order_ids)
    if field.name == "max_wait":
        return st.just(Duration(nanos=20_000_000))
    if field.name == "project_id":
        return st.sampled_from([0, PROJECT, OTHER_PROJECT])
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return st.dictionaries(st.sampled_from(COMMON[:3]), st.sampled_from(COMMON), max_size=2)
    if field.message_type is not None and field.message_type.full_name != Duration.DESCRIPTOR.full_name:
        return _nested(field.message_type, lambda inner: _plausible(inner, order_ids))
    if field.message_type is not None:
        return st.sampled_from([Duration(nanos=20_000_000), Duration(seconds=60), Duration(seconds=DAY)])
    by_type: dict[int, st.SearchStrategy[Any]] = {
        FieldDescriptor.TYPE_STRING: st.sampled_from(COMMON),
        FieldDescriptor.TYPE_INT64: st.sampled_from([0, 1, 2, PROJECT]),
        FieldDescriptor.TYPE_INT32: st.sampled_from([0, 1, 2, 10]),
        FieldDescriptor.TYPE_BOOL: st.booleans(),
    }
    if field.enum_type is not None:
        return st.sampled_from([value.number for value in field.enum_type.values])
    return by_type[field.type]


@st.composite
def messages(
    draw: st.DrawFn,
    descriptor: Descriptor,
    hostile: dict[str, st.SearchStrategy[Any]],
    order_ids: list[str],
) -> bytes:
    """A plausible request with some fields left unset or given hostile values: from `hostile` when it names the
    field (those fields are hostile half the time), else any value of the field's type (a fifth of the time)."""
    message = GetMessageClass(descriptor)()
    for field in descriptor.fields:
        # Hypothesis draws small bounded integers about uniformly: this sets the odds of each treatment.
        roll = draw(st.integers(0, 9), label=f"{field.name} treatment")
        if roll == 0:
            continue  # unset
        if roll <= (5 if field.name in hostile else 2):
            strategy = hostile.get(field.name, _hostile(field))
        else:
            strategy = _plausible(field, order_ids)
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if field.is_repeated and not is_map:
            getattr(message, field.name).extend(draw(st.lists(strategy, max_size=4), label=field.name))
            continue
        value = draw(strategy, label=field.name)
        if isinstance(value, dict):
            getattr(message, field.name).update(value)
        elif isinstance(value, Message):
            getattr(message, field.name).CopyFrom(value)
        else:
            setattr(message, field.name, value)
    return message.SerializeToString()


def requests(method: str, simulator: XsollaSimulator) -> st.SearchStrategy[bytes]:
    """`messages` of `method`'s request type; GetOrderStatus's tokens include ones the simulator issued, and its
    orders the one the simulator holds."""
    tokens = st.one_of(texts, st.sampled_from(COMMON).map(simulator.issue_token))
    projects = st.one_of(int64s, st.sampled_from([0, PROJECT, OTHER_PROJECT, 1]))
    hostile = {
        "page_token": page_tokens,
        "cursor": page_tokens,
        "max_wait": max_waits,
        "token": tokens,
        "project_id": projects,
    }
    order_ids = [str(order.order_id) for order in simulator.orders] + ["1", "404"]
    return messages(SERVICE.methods_by_name[method].input_type, hostile, order_ids)


@st.composite
def damaged(draw: st.DrawFn, requests: st.SearchStrategy[bytes]) -> bytes:
    """A request's bytes cut short, with a byte changed, or with bytes inserted: mostly decodes up to the damage."""
    payload = draw(requests)
    position = draw(st.integers(0, len(payload)))
    how = draw(st.sampled_from(["cut", "change", "insert"]))
    if how == "cut":
        return payload[:position]
    if how == "insert" or not payload:
        return payload[:position] + draw(st.binary(min_size=1, max_size=8)) + payload[position:]
    at = min(position, len(payload) - 1)
    return payload[:at] + bytes([payload[at] ^ draw(st.integers(1, 255))]) + payload[at + 1 :]


def byte_strings(method: str, simulator: XsollaSimulator) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, and damaged requests of `method`."""
    return st.one_of(
        st.binary(max_size=64), st.binary(min_size=200, max_size=2000), damaged(requests(method, simulator))
    )


header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
KEYS = {WRITER_KEY, READER_KEY}


def _near_misses(key: str) -> list[str]:
    return [
        f"Bearer{key}",
        f"Basic {key}",
        f"Bearer: {key}",
        key,
        f"Bearer {key}x",
        f"Bearer {key[:-1]}",
        f"{key} Bearer",
    ]


NEAR_MISSES = [value for key in sorted(KEYS) for value in _near_misses(key)]


@st.composite
def strangers(draw: st.DrawFn) -> tuple[tuple[str, str], ...]:
    """Metadata without a valid API key: none, garbage, a near miss of a key, or a key in another header."""
    choice = draw(st.integers(0, 4))
    if choice == 0:
        return ()
    if choice == 4:
        return (("x-api-key", WRITER_KEY), ("authorization-key", f"Bearer {WRITER_KEY}"))
    value = draw(
        [
            header_values,
            st.tuples(st.sampled_from(["Bearer ", "bearer ", "Basic ", ""]), header_values).map("".join),
            st.sampled_from(NEAR_MISSES),
        ][choice - 1]
    )
    scheme, _, key = value.partition(" ")
    assume(not (scheme.lower() == "bearer" and key.strip() in KEYS))
    return (("authorization", value),)


# --- properties ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@FUZZ
@given(data=st.data())
async def test_arbitrary_bytes_are_refused_cleanly(
    raw: RawChannel,
    service: Service,
    redis_client: aioredis.Redis,
    simulator: XsollaSimulator,
    method: str,
    data: st.DataObject,
) -> None:
    """Arbitrary bytes as the request: undecodable ones are INVALID_ARGUMENT, and nothing but a documented answer
    ever comes back; only OK writes."""
    payload = data.draw(byte_strings(method, simulator), label="payload")
    before = await store_state(service, redis_client, method)
    outcome = await raw.call(method, payload, bearer(WRITER_KEY), timeout_s=2.0)
    _check_answer(method, outcome)
    if not _decodes(method, payload):
        assert outcome.code == StatusCode.INVALID_ARGUMENT, outcome
        assert outcome.details.startswith("request: is not a valid entitlements.v1."), outcome
    if outcome.code != StatusCode.OK:
        assert await store_state(service, redis_client, method) == before, outcome


@pytest.mark.parametrize("method", METHODS)
@FUZZ
@given(data=st.data())
async def test_arbitrary_field_values_get_documented_answers(
    raw: RawChannel,
    service: Service,
    redis_client: aioredis.Redis,
    simulator: XsollaSimulator,
    method: str,
    data: st.DataObject,
) -> None:
    """Arbitrary text, extreme and negative numbers, out-of-range durations, big maps and forged tokens in every
    field: a documented answer, never UNKNOWN or INTERNAL; a refusal writes nothing."""
    payload = data.draw(requests(method, simulator), label="request")
    before = await store_state(service, redis_client, method)
    outcome = await raw.call(method, payload, bearer(WRITER_KEY), timeout_s=2.0)
    _check_answer(method, outcome)
    if outcome.code != StatusCode.OK:
        assert await store_state(service, redis_client, method) == before, outcome


@pytest.mark.parametrize("method", METHODS)
@FUZZ
@given(data=st.data())
async def test_strangers_get_only_unauthenticated(
    raw: RawChannel, simulator: XsollaSimulator, method: str, data: st.DataObject
) -> None:
    """Without a valid API key, whatever the request (bytes or a well-formed message), the answer is
    UNAUTHENTICATED and says nothing about the request."""
    payload = data.draw(st.one_of(byte_strings(method, simulator), requests(method, simulator)), label="payload")
    metadata = data.draw(strangers(), label="metadata")
    outcome = await raw.call(method, payload, metadata)
    assert outcome.code == StatusCode.UNAUTHENTICATED, outcome
    assert outcome.details.startswith(("missing API key", "unknown or malformed API key")), outcome


@pytest.mark.parametrize("method", METHODS)
@FUZZ
@given(data=st.data())
async def test_key_bound_to_a_project_reaches_no_other(
    raw: RawChannel,
    service: Service,
    redis_client: aioredis.Redis,
    simulator: XsollaSimulator,
    method: str,
    data: st.DataObject,
) -> None:
    """A key bound to OTHER_PROJECT, whatever the request holds: PERMISSION_DENIED when it names PROJECT (or any
    other well-formed project id), a documented answer otherwise; a refusal writes nothing."""
    payload = data.draw(requests(method, simulator), label="request")
    project_id = REQUEST_TYPES[method].FromString(payload).project_id  # type: ignore[attr-defined]
    before = await store_state(service, redis_client, method)
    outcome = await raw.call(method, payload, bearer(BOUND_KEY), timeout_s=2.0)
    if project_id > 0 and project_id != OTHER_PROJECT:
        if outcome.code == StatusCode.DEADLINE_EXCEEDED:
            # A loaded machine can hold even a refusal past 2 s (a deadline that stays short for the streams the
            # service accepts): asked again with room, it must be the refusal, and nothing written either time.
            outcome = await raw.call(method, payload, bearer(BOUND_KEY), timeout_s=20.0)
        assert outcome.code == StatusCode.PERMISSION_DENIED, outcome
        assert outcome.details == f"API key 'bound' is not bound to project {project_id}", outcome
    else:
        _check_answer(method, outcome)
    if outcome.code != StatusCode.OK:
        assert await store_state(service, redis_client, method) == before, outcome
