"""Request messages for each RPC, shared by the async and the sync client.

Nothing here checks what the server checks (lengths, ranges, required fields): the server is the one
authority, and its INVALID_ARGUMENT names the field. Only what cannot be sent at all fails here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import timedelta

from google.protobuf import duration_pb2

from entitlements.v1 import entitlements_pb2 as pb


def grant(
    user_id: str,
    sku: str,
    *,
    project_id: int,
    quantity: int | None,
    duration: timedelta | None,
    kind: int | None,
    idempotency_key: str | None,
    reason: str,
    metadata: Mapping[str, str] | None,
) -> pb.GrantRequest:
    """Builds a GrantRequest; a new idempotency key when none is given."""
    request = pb.GrantRequest(
        project_id=project_id,
        user_id=user_id,
        sku=sku,
        idempotency_key=_idempotency_key(idempotency_key),
        reason=reason,
        metadata=dict(metadata or {}),
    )
    # `quantity` is a proto3 optional and `duration` a message: leaving them unset, rather than setting
    # 0 or an empty Duration, is what tells the server "not given".
    if quantity is not None:
        request.quantity = quantity
    if duration is not None:
        request.duration.CopyFrom(_duration("duration", duration))
    if kind is not None:
        # Any int goes through: the server answers INVALID_ARGUMENT for values outside the enum.
        request.kind = pb.EntitlementKind.ValueType(kind)
    return request


def revoke(user_id: str, sku: str, *, project_id: int, idempotency_key: str | None, reason: str) -> pb.RevokeRequest:
    """Builds a RevokeRequest; a new idempotency key when none is given."""
    return pb.RevokeRequest(
        project_id=project_id,
        user_id=user_id,
        sku=sku,
        idempotency_key=_idempotency_key(idempotency_key),
        reason=reason,
    )


def check_entitlement(user_id: str, sku: str, *, project_id: int) -> pb.CheckEntitlementRequest:
    """Builds a CheckEntitlementRequest."""
    return pb.CheckEntitlementRequest(project_id=project_id, user_id=user_id, sku=sku)


def check_entitlements(pairs: Iterable[tuple[str, str]], *, project_id: int) -> pb.CheckEntitlementsRequest:
    """Builds a CheckEntitlementsRequest from (user_id, sku) pairs."""
    checks = []
    for index, pair in enumerate(pairs):
        if isinstance(pair, str) or len(pair) != 2:
            raise TypeError(f"pairs[{index}] must be a (user_id, sku) pair, not {pair!r}")
        checks.append(pb.CheckEntitlementsRequest.Check(user_id=pair[0], sku=pair[1]))
    return pb.CheckEntitlementsRequest(project_id=project_id, checks=checks)


def list_entitlements(
    user_id: str, *, project_id: int, page_size: int, page_token: str, include_expired: bool
) -> pb.ListEntitlementsRequest:
    """Builds a ListEntitlementsRequest."""
    return pb.ListEntitlementsRequest(
        project_id=project_id,
        user_id=user_id,
        page_size=page_size,
        page_token=page_token,
        include_expired=include_expired,
    )


def list_subscriptions(
    user_id: str, *, project_id: int, limit: int, offset: int, locale: str, include_inactive: bool
) -> pb.ListSubscriptionsRequest:
    """Builds a ListSubscriptionsRequest."""
    return pb.ListSubscriptionsRequest(
        project_id=project_id,
        user_id=user_id,
        limit=limit,
        offset=offset,
        locale=locale,
        include_inactive=include_inactive,
    )


def list_ledger(user_id: str, *, project_id: int, page_size: int, page_token: str) -> pb.ListLedgerRequest:
    """Builds a ListLedgerRequest."""
    return pb.ListLedgerRequest(project_id=project_id, user_id=user_id, page_size=page_size, page_token=page_token)


def get_order_status(
    order_id: str, user_id: str, *, project_id: int, token: str, max_wait: timedelta | None
) -> pb.GetOrderStatusRequest:
    """Builds a GetOrderStatusRequest; `max_wait` stays unset (the server's default) when None."""
    request = pb.GetOrderStatusRequest(order_id=order_id, user_id=user_id, project_id=project_id, token=token)
    if max_wait is not None:
        request.max_wait.CopyFrom(_duration("max_wait", max_wait))
    return request


def project(given: int, default: int) -> int:
    """The project of a call: `given`, or the client's `default` when it is 0 (and the server's choice when both
    are: see the proto's `project_id`)."""
    if isinstance(given, bool) or not isinstance(given, int):
        raise TypeError(f"project_id must be an int, not {type(given).__name__}")
    return given or default


def _idempotency_key(given: str | None) -> str:
    # A generated key protects this one call (gRPC's retries resend it unchanged), not a retry the caller
    # makes by calling again: that needs a key derived from the caller's own data, such as the order id.
    return str(uuid.uuid4()) if given is None else given


def _duration(name: str, value: timedelta) -> duration_pb2.Duration:
    if not isinstance(value, timedelta):
        raise TypeError(f"{name} must be a datetime.timedelta, not {type(value).__name__}")
    duration = duration_pb2.Duration()
    duration.FromTimedelta(value)
    return duration
