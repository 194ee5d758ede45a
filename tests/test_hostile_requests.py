"""Requests our client would never build: bytes that are not the RPC's request message, project ids at the edges of
int64 and beyond, and page tokens that ListEntitlements did not make. Each is INVALID_ARGUMENT naming what is wrong,
answered only after the API key and its scope were checked, logged as one JSON line and counted like any other
call."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
import structlog
from google.protobuf.message_factory import GetMessageClass

from core import logs
from entitlements import AsyncEntitlementsClient, InvalidArgumentError
from entitlements.v1 import entitlements_pb2 as pb
from server.app import Service
from server.embedded import EmbeddedRedis
from server.validation import MAX_PAGE_TOKEN_CHARS, encode_page_token, page_query
from tests.helpers.gateway import PROJECT
from tests.helpers.raw import METHODS, SERVICE, RawChannel, bearer, raw_channel
from tests.helpers.services import READER_KEY, WRITER_KEY, ServiceFactory, served, store_changes
from tests.helpers.waiting import eventually

WRITER = bearer(WRITER_KEY)


def bad_utf8(method: str) -> bytes:
    """`method`'s request with its first string field set to bytes that are not UTF-8 (for a request with no string
    field of its own, CheckEntitlements', the first string field of its first message field)."""
    return _bad_utf8(SERVICE.methods_by_name[method].input_type)


def _bad_utf8(message: Any) -> bytes:
    string = next((f for f in message.fields if f.type == f.TYPE_STRING and not f.is_repeated), None)
    if string is not None:
        return bytes([string.number << 3 | 2, 2, 0xFF, 0xFE])
    nested = next(f for f in message.fields if f.type == f.TYPE_MESSAGE)
    inner = _bad_utf8(nested.message_type)
    return bytes([nested.number << 3 | 2, len(inner)]) + inner


UNDECODABLE: dict[str, Callable[[str], bytes]] = {
    "invalid UTF-8": bad_utf8,
    "truncated field": lambda method: b"\x0a\x05ab",
    "truncated varint": lambda method: b"\x10\xff\xff",
    "field number 0": lambda method: b"\x00",
    "unterminated group": lambda method: b"\x7b" * 200,
}


@pytest.fixture
async def raw(service: Service) -> AsyncIterator[RawChannel]:
    """A channel sending the request bytes as given."""
    async with raw_channel(service) as channel:
        yield channel


def expected_message(method: str) -> str:
    name = SERVICE.methods_by_name[method].input_type.full_name
    return f"request: is not a valid {name} (malformed protobuf, or a string field that is not UTF-8)"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", sorted(UNDECODABLE))
async def test_undecodable_request_is_invalid_argument(raw: RawChannel, method: str, case: str) -> None:
    """Bytes that are not the RPC's request message are INVALID_ARGUMENT with a short message, not UNKNOWN with the
    parser's."""
    outcome = await raw.call(method, UNDECODABLE[case](method), WRITER)
    assert (outcome.code, outcome.details) == (grpc.StatusCode.INVALID_ARGUMENT, expected_message(method))


@pytest.mark.parametrize("method", METHODS)
async def test_undecodable_request_from_a_stranger_is_only_unauthenticated(raw: RawChannel, method: str) -> None:
    """Without a valid key, or without the scope, the answer says so and nothing about the request's bytes."""
    payload = bad_utf8(method)
    missing = await raw.call(method, payload, ())
    assert (missing.code, missing.details) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "missing API key: send 'authorization: Bearer <key>'",
    )
    unknown = await raw.call(method, payload, bearer("not-a-key"))
    assert unknown.code == grpc.StatusCode.UNAUTHENTICATED
    assert "request" not in unknown.details
    reader = await raw.call(method, payload, bearer(READER_KEY))
    if method in ("Grant", "Revoke"):
        assert (reader.code, reader.details) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "API key 'reader' lacks the 'write' scope",
        )
    else:
        assert reader.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("method", ["CheckEntitlement", "GetOrderStatus"])
async def test_undecodable_request_is_one_json_log_line_and_counted(
    service: Service, raw: RawChannel, capsys: pytest.CaptureFixture[str], method: str
) -> None:
    """An undecodable request (unary or stream) logs one JSON `rpc` line with its code, no plain-text traceback,
    and is counted in the RPC metrics."""
    previous = structlog.get_config()
    logs.configure("info", json=True, cache_loggers=False)
    try:
        outcome = await raw.call(method, bad_utf8(method), WRITER)
    finally:
        # Back to the suite's configuration, writing to the real stderr: capsys's stream closes with this test.
        structlog.configure(**previous)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    captured = capsys.readouterr()
    written = [line for line in (captured.err + captured.out).splitlines() if line.strip()]
    parsed = [json.loads(line) for line in written]  # every line is JSON: no traceback from grpc's own logger
    rpc_lines = [line for line in parsed if line["event"] == "rpc"]
    assert len(rpc_lines) == 1
    assert {key: rpc_lines[0].get(key) for key in ("method", "code", "principal", "error")} == {
        "method": method,
        "code": "INVALID_ARGUMENT",
        "principal": "writer",
        "error": expected_message(method),
    }
    assert not [line for line in parsed if line["level"] in ("error", "critical")]
    labels = {"method": method, "code": "INVALID_ARGUMENT"}
    assert service.registry.get_sample_value("entitlements_rpc_requests_total", labels) == 1
    # The handler leaves (and the gauge drops) just after the status it sent reached the caller.
    await eventually(
        lambda: service.registry.get_sample_value("entitlements_rpc_in_flight", {"method": method}) == 0,
        what="the call to leave the in-flight gauge",
    )


# --- project ids --------------------------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    """`value` as a base-128 varint, with no length cap; a negative one in 64-bit two's complement, as protobuf writes
    negative int64s."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def with_project(method: str, wire: bytes) -> bytes:
    """A valid request of `method` for player-1 followed by `wire` as its project_id field's value."""
    request_type = SERVICE.methods_by_name[method].input_type
    number = request_type.fields_by_name["project_id"].number
    fields = {"user_id": "player-1", "sku": "gold", "idempotency_key": "k", "order_id": "1"}
    request = GetMessageClass(request_type)(**{k: v for k, v in fields.items() if k in request_type.fields_by_name})
    return request.SerializeToString() + varint(number << 3) + wire


PROJECT_IDS = {
    "-1": (varint(-1), "must be between 1 and"),
    "int64 minimum": (varint(-(2**63)), "must be between 1 and"),
    "int64 maximum": (varint(2**63 - 1), "is not a project this service serves"),
    "2**63 (wraps to the minimum)": (varint(2**63), "must be between 1 and"),
    "2**64 - 1 (wraps to -1)": (varint(2**64 - 1), "must be between 1 and"),
}


@pytest.fixture
async def one_project(service_factory: ServiceFactory, redis_server: EmbeddedRedis) -> AsyncIterator[RawChannel]:
    """A raw channel to a service that serves PROJECT only."""
    service = await service_factory(redis_url=redis_server.url, projects=served(PROJECT, default=PROJECT))
    async with raw_channel(service) as channel:
        yield channel


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", sorted(PROJECT_IDS))
async def test_extreme_project_ids_are_invalid_argument(
    one_project: RawChannel, redis_client: aioredis.Redis, method: str, case: str
) -> None:
    """project_id at and past the edges of int64 on the wire is INVALID_ARGUMENT naming project_id (a varint longer
    than ten bytes names the request), never UNKNOWN or INTERNAL, and writes nothing."""
    raw = one_project
    wire, problem = PROJECT_IDS[case]
    before = await store_changes(redis_client)
    outcome = await raw.call(method, with_project(method, wire), WRITER)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome
    assert outcome.details.startswith("project_id: "), outcome
    assert problem in outcome.details, outcome
    overlong = await raw.call(method, with_project(method, b"\xff" * 10 + b"\x01"), WRITER)
    assert overlong.code == grpc.StatusCode.INVALID_ARGUMENT, overlong
    assert overlong.details == expected_message(method)
    assert await store_changes(redis_client) == before


# --- page tokens --------------------------------------------------------------------------------------------------


def token_of(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def owned_token(**fields: object) -> str:
    """A token of player-1's shape with `fields` replaced."""
    document = {"p": PROJECT, "u": logs.user_ref("player-1"), "a": "gold", "x": False, **fields}
    return token_of(json.dumps(document).encode())


FORGED_TOKENS = {
    "deeply nested JSON": token_of(b"[" * 975),  # about 1,300 characters, as in the report
    "deeply nested, closed": token_of(b"[" * 1500 + b"]" * 1500),
    "nested inside a field": token_of(b'{"u":"x","a":' + b"[" * 1400 + b"]" * 1400 + b',"x":false}'),
    "longer than any token made": "A" * (MAX_PAGE_TOKEN_CHARS + 1),
    "huge": "A" * 1_000_000,
    "not base64url": "%%%",
    "standard base64 alphabet": token_of(b'{"u":"x"}') + "+/",
    "one character past a block": "AAAAA",
    "not UTF-8": token_of(b"\xff\xfe\xfd"),
    "UTF-16 JSON": token_of(json.dumps({"u": logs.user_ref("player-1"), "a": "b", "x": False}).encode("utf-16")),
    "a list": token_of(b"[1,2,3]"),
    "a string": token_of(b'"gold"'),
    "a number": token_of(b"1e999999"),
    "missing field": token_of(json.dumps({"u": logs.user_ref("player-1"), "x": False}).encode()),
    "sku not a string": owned_token(a=["gold"]),
    "filter not a boolean": owned_token(x=0),
    "non-ASCII": "ﬀ" * 8,
}


@pytest.mark.parametrize("case", sorted(FORGED_TOKENS))
async def test_forged_page_token_is_invalid_argument(client: AsyncEntitlementsClient, case: str) -> None:
    """A page token ListEntitlements did not make is INVALID_ARGUMENT naming page_token, never INTERNAL."""
    with pytest.raises(InvalidArgumentError, match=r"page_token: is not a token returned by ListEntitlements$"):
        await client.list_entitlements("player-1", page_token=FORGED_TOKENS[case])


async def test_longest_sku_pages_through(client: AsyncEntitlementsClient) -> None:
    """A page ending on a 256-byte sku of two-byte characters (a long token) continues to the next page."""
    long_sku, after = "é" * 128, "ê"
    await client.grant("player-1", long_sku)
    await client.grant("player-1", after)
    first = await client.list_entitlements("player-1", page_size=1)
    assert [e.sku for e in first.entitlements] == [long_sku]
    assert len(first.next_page_token) > 1000
    second = await client.list_entitlements("player-1", page_size=1, page_token=first.next_page_token)
    assert [e.sku for e in second.entitlements] == [after]


def test_every_token_the_service_makes_is_within_the_bound() -> None:
    """Even a token for a 256-byte sku of characters JSON escapes (6 characters each) fits the length bound."""
    user, sku = "u" * 256, "\x7f" * 256
    token = encode_page_token(2**63 - 1, user, sku, True)
    assert len(token) <= MAX_PAGE_TOKEN_CHARS
    query = page_query(pb.ListEntitlementsRequest(user_id=user, page_token=token, include_expired=True), 2**63 - 1)
    assert query.after_sku == sku
