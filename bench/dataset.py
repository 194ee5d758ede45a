"""The data written before the runs, through the project's own client, and the requests the runs send.

`populate` gives every benchmark player three items, one of each kind, so CheckEntitlement reads a real
stored record and Grant updates a held consumable. `sample_calls` makes a few calls of each measured request
through the client and checks their answers, on both servers: h2load cannot see gRPC statuses, so a wrong
API key or a malformed body would otherwise be measured as a fast success.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc

from entitlements import AsyncEntitlementsClient
from entitlements.v1 import entitlements_pb2 as pb
from entitlements.v1 import entitlements_pb2_grpc as pb_grpc

GRANT_SKU = "bench-gold"  # consumable: what CheckEntitlement reads and Grant adds to
PERMANENT_SKU = "bench-skin"
TIME_LIMITED_SKU = "bench-pass"
REPLAY_KEY = "bench-replay"
POPULATE_CONCURRENCY = 64
#: The pairs of the CheckEntitlements runs' request.
BATCH_PAIRS = 100


def user_id(number: int) -> str:
    """The id of benchmark player `number`."""
    return f"bench-user-{number:05d}"


def check_request(number: int = 1) -> pb.CheckEntitlementRequest:
    """CheckEntitlement of player `number`'s consumable (held, active)."""
    return pb.CheckEntitlementRequest(user_id=user_id(number), sku=GRANT_SKU)


def batch_check_request(pairs: int = BATCH_PAIRS) -> pb.CheckEntitlementsRequest:
    """CheckEntitlements of `pairs` pairs: one held item of each of `pairs` players (the three kinds in turn, so
    that the answers carry every kind's fields), as a lobby's check would be."""
    skus = (GRANT_SKU, PERMANENT_SKU, TIME_LIMITED_SKU)
    return pb.CheckEntitlementsRequest(
        checks=[pb.CheckEntitlementsRequest.Check(user_id=user_id(n), sku=skus[n % 3]) for n in range(pairs)]
    )


def replay_request(number: int = 1) -> pb.GrantRequest:
    """A Grant with a fixed idempotency key: after the first call, every call is an idempotent replay."""
    return pb.GrantRequest(
        user_id=user_id(number),
        sku=GRANT_SKU,
        quantity=1,
        kind=pb.ENTITLEMENT_KIND_CONSUMABLE,
        idempotency_key=REPLAY_KEY,
        reason="bench",
    )


async def populate(target: str, api_key: str | None, users: int) -> int:
    """Grants each of `users` players a consumable (3 units), a permanent and a 30-day item.

    Returns:
        The number of Grant calls made.
    """
    limit = asyncio.Semaphore(POPULATE_CONCURRENCY)
    async with AsyncEntitlementsClient(target, api_key=api_key) as client:

        async def give(number: int) -> None:
            player = user_id(number)
            async with limit:
                await client.grant(player, GRANT_SKU, quantity=3, idempotency_key=f"populate:{player}:gold")
                await client.grant(
                    player, PERMANENT_SKU, kind=pb.ENTITLEMENT_KIND_PERMANENT, idempotency_key=f"populate:{player}:skin"
                )
                await client.grant(
                    player, TIME_LIMITED_SKU, duration=timedelta(days=30), idempotency_key=f"populate:{player}:pass"
                )

        await asyncio.gather(*(give(n) for n in range(users)))
    return 3 * users


async def sample_calls(target: str, api_key: str | None, *, stateful: bool, calls: int = 20) -> None:
    """Makes `calls` CheckEntitlement and replayed Grant calls and one CheckEntitlements exactly as the load will,
    checking the answers.

    Args:
        target: `host:port`.
        api_key: sent as the bearer token.
        stateful: True for the service, where the first replayed Grant applies the grant and every later one
            must come back `replayed`; False for the bare server, whose fixed answers are only checked for
            their status.
        calls: how many calls of each.

    Raises:
        entitlements.errors.EntitlementsError: a call failed (wrong key, bad request, server trouble).
        RuntimeError: a call succeeded with an unexpected answer.
    """
    async with AsyncEntitlementsClient(target, api_key=api_key, retry_policy=None) as client:
        check, replay = check_request(), replay_request()
        for number in range(calls):
            checked = await client.check_entitlement(check.user_id, check.sku)
            if not checked.active:
                raise RuntimeError(f"{target}: {check.user_id} does not hold {check.sku}; was the data written?")
            granted = await client.grant(
                replay.user_id,
                replay.sku,
                quantity=replay.quantity,
                kind=replay.kind,
                idempotency_key=replay.idempotency_key,
                reason=replay.reason,
            )
            if stateful and number > 0 and not granted.replayed:
                raise RuntimeError(f"{target}: a Grant with a used idempotency key was applied again")
        batch = batch_check_request()
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.EntitlementServiceStub(channel)
            answer = await stub.CheckEntitlements(batch, metadata=(("authorization", f"Bearer {api_key}"),))
        if len(answer.results) != len(batch.checks) or not all(result.active for result in answer.results):
            raise RuntimeError(f"{target}: CheckEntitlements did not answer every pair active; was the data written?")
