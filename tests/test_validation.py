"""Every invalid argument is INVALID_ARGUMENT with a message naming the field, and nothing is written."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from google.protobuf.duration_pb2 import Duration

from entitlements import AsyncEntitlementsClient, InvalidArgumentError
from entitlements.v1 import entitlements_pb2 as pb
from entitlements.v1 import entitlements_pb2_grpc as pb_grpc
from server.app import Service
from tests.helpers.services import data_keys

LONG = "x" * 257
GRANT_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("empty user", {"user_id": ""}, "user_id: is required"),
    ("long user", {"user_id": LONG}, "user_id: must be at most 256 bytes"),
    ("long multibyte user", {"user_id": "é" * 129}, "user_id: must be at most 256 bytes"),
    ("control char user", {"user_id": "a\nb"}, "user_id: must not contain control characters"),
    ("C1 control user", {"user_id": "a\u0085b"}, "user_id: must not contain control characters"),
    ("DEL in sku", {"sku": "gold\x7f"}, "sku: must not contain control characters"),
    ("empty sku", {"sku": ""}, "sku: is required"),
    ("long sku", {"sku": LONG}, "sku: must be at most 256 bytes"),
    ("zero quantity", {"quantity": 0}, "quantity: must be between 1 and 1,000,000"),
    ("negative quantity", {"quantity": -5}, "quantity: must be between 1 and 1,000,000"),
    ("huge quantity", {"quantity": 10**12}, "quantity: must be between 1 and 1,000,000"),
    ("zero duration", {"duration": Duration(seconds=0)}, "duration: must be positive"),
    ("negative duration", {"duration": Duration(seconds=-60)}, "duration: must be positive"),
    ("sub-ms duration", {"duration": Duration(nanos=999)}, "duration: must be positive"),
    ("bad duration", {"duration": Duration(seconds=1, nanos=-5)}, "duration: is not a valid"),
    (
        "century duration",
        {"duration": Duration(seconds=40_000 * 86_400)},
        "duration: must be at most 36,500 days",
    ),
    (
        "quantity x duration",
        {"duration": Duration(seconds=86_400 * 365), "quantity": 101},
        "quantity: quantity x duration must be at most 36,500 days",
    ),
    ("unknown kind", {"kind": 9}, "kind: unknown EntitlementKind value 9"),
    (
        "duration on consumable",
        {"kind": pb.ENTITLEMENT_KIND_CONSUMABLE, "duration": Duration(seconds=60)},
        "duration: only time-limited items take a duration",
    ),
    (
        "time-limited without duration",
        {"kind": pb.ENTITLEMENT_KIND_TIME_LIMITED},
        "duration: is required for time-limited items",
    ),
    (
        "permanent with quantity",
        {"kind": pb.ENTITLEMENT_KIND_PERMANENT, "quantity": 2},
        "quantity: must be 1 for permanent items",
    ),
    ("empty key", {"idempotency_key": ""}, "idempotency_key: is required"),
    ("long key", {"idempotency_key": LONG}, "idempotency_key: must be at most 256 bytes"),
    ("long reason", {"reason": "r" * 1025}, "reason: must be at most 1024 bytes"),
    (
        "many metadata",
        {"metadata": {f"k{i}": "v" for i in range(33)}},
        "metadata: must have at most 32 entries",
    ),
    ("long metadata key", {"metadata": {"k" * 65: "v"}}, "metadata: keys must be 1..64 bytes"),
    ("long metadata value", {"metadata": {"k": "v" * 1025}}, "metadata[k]: must be at most 1024 bytes"),
]


@pytest.fixture
async def raw_stub(service: Service) -> Any:
    """A bare generated stub, to send requests the typed client would never build."""
    import grpc

    assert service.endpoints is not None
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.endpoints.grpc_port}")
    yield pb_grpc.EntitlementServiceStub(channel)
    await channel.close(None)


WRITE_METADATA = (("authorization", "Bearer writer-key-0123456789"),)


@pytest.mark.parametrize(("case", "fields", "message"), GRANT_CASES, ids=[c[0] for c in GRANT_CASES])
async def test_invalid_grant_is_rejected_and_writes_nothing(
    raw_stub: Any, redis_client: aioredis.Redis, case: str, fields: dict[str, Any], message: str
) -> None:
    """An invalid GrantRequest is INVALID_ARGUMENT naming the field; Redis stays empty."""
    import grpc

    request = {"user_id": "player-1", "sku": "gold", "idempotency_key": "key-1", **fields}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await raw_stub.Grant(pb.GrantRequest(**request), metadata=WRITE_METADATA)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")
    assert await data_keys(redis_client) == 0


async def test_client_reports_invalid_argument(client: AsyncEntitlementsClient) -> None:
    """The client raises InvalidArgumentError with the server's message."""
    with pytest.raises(InvalidArgumentError, match="quantity: must be between"):
        await client.grant("player-1", "gold", quantity=0)
    with pytest.raises(InvalidArgumentError, match="duration: must be positive"):
        await client.grant("player-1", "gold", duration=timedelta(0))


READ_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("revoke empty user", "Revoke", {"sku": "s", "idempotency_key": "k"}, "user_id: is required"),
    ("revoke empty sku", "Revoke", {"user_id": "u", "idempotency_key": "k"}, "sku: is required"),
    ("revoke empty key", "Revoke", {"user_id": "u", "sku": "s"}, "idempotency_key: is required"),
    (
        "revoke long reason",
        "Revoke",
        {"user_id": "u", "sku": "s", "idempotency_key": "k", "reason": "r" * 1025},
        "reason: must be at most 1024 bytes",
    ),
    ("check empty user", "CheckEntitlement", {"sku": "s"}, "user_id: is required"),
    ("check long sku", "CheckEntitlement", {"user_id": "u", "sku": LONG}, "sku: must be at most 256 bytes"),
    ("list empty user", "ListEntitlements", {}, "user_id: is required"),
    (
        "list negative size",
        "ListEntitlements",
        {"user_id": "u", "page_size": -1},
        "page_size: must be between",
    ),
    ("list huge size", "ListEntitlements", {"user_id": "u", "page_size": 501}, "page_size: must be between"),
    (
        "list garbage token",
        "ListEntitlements",
        {"user_id": "u", "page_token": "%%%"},
        "page_token: is not a token",
    ),
    ("subs empty user", "ListSubscriptions", {}, "user_id: is required"),
    ("subs limit", "ListSubscriptions", {"user_id": "u", "limit": 101}, "limit: must be between 0 and 100"),
    ("subs negative limit", "ListSubscriptions", {"user_id": "u", "limit": -1}, "limit: must be between"),
    ("subs offset", "ListSubscriptions", {"user_id": "u", "offset": -1}, "offset: must not be negative"),
    (
        "subs locale",
        "ListSubscriptions",
        {"user_id": "u", "locale": "english"},
        "locale: must be an ISO 639-1",
    ),
]
REQUEST_TYPES = {
    "Revoke": pb.RevokeRequest,
    "CheckEntitlement": pb.CheckEntitlementRequest,
    "ListEntitlements": pb.ListEntitlementsRequest,
    "ListSubscriptions": pb.ListSubscriptionsRequest,
}


@pytest.mark.parametrize(("case", "method", "fields", "message"), READ_CASES, ids=[c[0] for c in READ_CASES])
async def test_invalid_request_is_rejected(
    raw_stub: Any, redis_client: aioredis.Redis, case: str, method: str, fields: dict[str, Any], message: str
) -> None:
    """Every other RPC names the bad field in its INVALID_ARGUMENT and writes nothing."""
    import grpc

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(raw_stub, method)(REQUEST_TYPES[method](**fields), metadata=WRITE_METADATA)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")
    assert await data_keys(redis_client) == 0


async def test_page_token_is_bound_to_player_and_filter(client: AsyncEntitlementsClient) -> None:
    """A page token cannot be used for another player or another include_expired setting."""
    for sku in ("a", "b", "c"):
        await client.grant("player-1", sku)
    page = await client.list_entitlements("player-1", page_size=1)
    assert page.next_page_token
    with pytest.raises(InvalidArgumentError, match="page_token: belongs to a different"):
        await client.list_entitlements("player-2", page_size=1, page_token=page.next_page_token)
    with pytest.raises(InvalidArgumentError, match="page_token: belongs to a different"):
        await client.list_entitlements("player-1", page_size=1, page_token=page.next_page_token, include_expired=True)
