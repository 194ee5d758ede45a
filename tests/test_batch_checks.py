"""CheckEntitlements on real Redis (single server and cluster): each pair answered as CheckEntitlement answers it, in
request order, from one HMGET per player in one pipeline (one round trip per node); every pair validated before
anything is read; the keys, scopes and projects of every RPC; UNAVAILABLE when Redis is down."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
import redis.asyncio.connection as redis_connection

from core.connections import RedisClient
from core.keys import items_key
from entitlements.v1 import entitlements_pb2 as pb
from entitlements.v1 import entitlements_pb2_grpc as pb_grpc
from server.app import Service
from server.auth import hash_key, parse_api_keys
from server.embedded import EmbeddedRedis
from server.store import CONSUMABLE, PERMANENT, TIME_LIMITED, EntitlementStore, GrantCommand, pipelined
from tests.helpers.services import PROJECT, READER_KEY, WRITER_KEY, ServiceFactory, sample, served, store_changes
from tests.helpers.stores import StoreUnderTest, node_infos

OTHER = 310000
WRITE_ONLY_KEY = "write-only-key-0123456789"
OTHER_PROJECT_KEY = "other-project-key-0123456789"


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def checks(*pairs: tuple[str, str], project_id: int = 0) -> pb.CheckEntitlementsRequest:
    return pb.CheckEntitlementsRequest(
        checks=[pb.CheckEntitlementsRequest.Check(user_id=u, sku=s) for u, s in pairs], project_id=project_id
    )


@pytest.fixture
async def stub(service: Service) -> AsyncIterator[pb_grpc.EntitlementServiceAsyncStub]:
    """A gRPC stub on the test's service."""
    assert service.endpoints is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.endpoints.grpc_port}") as channel:
        yield pb_grpc.EntitlementServiceStub(channel)


@pytest.fixture
def store(redis_client: RedisClient) -> EntitlementStore:
    """A store of the test's own on the test's Redis: nothing else sends commands through its client."""
    return EntitlementStore(redis_client, timeout_s=5.0, idempotency_ttl_ms=60_000)


async def grant(stub: pb_grpc.EntitlementServiceAsyncStub, user_id: str, sku: str, **fields: Any) -> pb.GrantResponse:
    request = pb.GrantRequest(user_id=user_id, sku=sku, idempotency_key=f"{user_id}/{sku}/{len(fields)}", **fields)
    response: pb.GrantResponse = await stub.Grant(request, metadata=bearer(WRITER_KEY))
    return response


@pytest.fixture
def sent_batches() -> Iterator[list[int]]:
    """Records every write of packed commands to a Redis socket, by redis-py or on the store's pipelined connections
    (`server.store.pipelined`): one per round trip (a pipeline is one write)."""
    sends: list[int] = []
    original = redis_connection.AbstractConnection.send_packed_command
    original_flush = pipelined._Replies.flush

    async def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sends.append(1)
        await original(self, command, check_health)

    def counting_flush(self: Any) -> None:
        if self.outbox and not self.lost:
            sends.append(1)
        original_flush(self)

    redis_connection.AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    pipelined._Replies.flush = counting_flush  # type: ignore[method-assign]
    try:
        yield sends
    finally:
        redis_connection.AbstractConnection.send_packed_command = original  # type: ignore[method-assign]
        pipelined._Replies.flush = original_flush  # type: ignore[method-assign]


async def hmget_calls(redis: RedisClient) -> int:
    """HMGET commands Redis has run so far (summed over a cluster's primaries)."""
    infos = await node_infos(redis, "commandstats")
    return sum(int(info.get("cmdstat_hmget", {}).get("calls", 0)) for info in infos)


async def test_a_thousand_players_are_read_in_one_round_trip_per_node(
    store: EntitlementStore, redis_client: RedisClient, redis_server: StoreUnderTest, sent_batches: list[int]
) -> None:
    """1,000 pairs over 1,000 players: one HMGET per player, one pipeline per node, each pair its own answer."""
    limit = asyncio.Semaphore(50)

    async def seed(i: int) -> None:
        async with limit:
            await store.grant(GrantCommand(PROJECT, f"player-{i}", "gold", 0, i + 1, 0, f"k{i}"), "test")

    await asyncio.gather(*(seed(i) for i in range(0, 1000, 2)))  # the odd players hold nothing
    pairs = [(f"player-{i}", "gold") for i in range(1000)]
    await store.get_many(PROJECT, pairs[:1])  # the client has learnt the cluster's slots
    nodes = len(redis_server.local_cluster.primaries()) if redis_server.local_cluster is not None else 1
    hmgets = await hmget_calls(redis_client)
    sent_batches.clear()
    records = await store.get_many(PROJECT, pairs)
    round_trips = len(sent_batches)
    assert await hmget_calls(redis_client) - hmgets == 1000
    assert round_trips <= nodes, f"{round_trips} round trips for {nodes} node(s): {sent_batches}"
    quantities = [None if stored is None else stored[1] for stored in records]  # each player's own quantity
    assert quantities == [i + 1 if i % 2 == 0 else None for i in range(1000)]


async def test_repeats_read_each_player_once_and_each_sku_once(
    store: EntitlementStore, redis_client: RedisClient, redis_server: StoreUnderTest, sent_batches: list[int]
) -> None:
    """Pairs that repeat a player or a (player, sku) are answered at their place from one HMGET of the player."""
    await store.grant(GrantCommand(PROJECT, "p", "gold", 0, 7, 0, "k1"), "test")
    await store.grant(GrantCommand(PROJECT, "p", "skin", PERMANENT, 1, 0, "k2"), "test")
    await store.get_many(PROJECT, [("p", "gold")])
    hmgets = await hmget_calls(redis_client)
    sent_batches.clear()
    pairs = [("p", "gold"), ("q", "gold"), ("p", "skin"), ("p", "gold"), ("p", "none"), ("q", "gold")]
    records = await store.get_many(PROJECT, pairs)
    cluster = redis_server.local_cluster
    nodes = 1 if cluster is None else len({cluster.primary_for(items_key(PROJECT, u)).port for u in ("p", "q")})
    assert len(sent_batches) == nodes
    assert await hmget_calls(redis_client) - hmgets == 2
    kinds_and_quantities = [None if stored is None else stored[:2] for stored in records]
    assert kinds_and_quantities == [(CONSUMABLE, 7), None, (PERMANENT, 1), (CONSUMABLE, 7), None, None]


async def test_each_pair_is_answered_as_check_entitlement_answers_it(
    service: Service, stub: pb_grpc.EntitlementServiceAsyncStub
) -> None:
    """Held, permanent, expired, revoked, unknown sku, unknown player, repeats: results[i] is CheckEntitlement's
    answer for checks[i], with `active` as of one moment."""
    await grant(stub, "alice", "gold", quantity=5)
    await grant(stub, "alice", "skin", kind=pb.ENTITLEMENT_KIND_PERMANENT)
    await grant(stub, "bob", "pass", duration={"nanos": 50_000_000}, kind=pb.ENTITLEMENT_KIND_TIME_LIMITED)
    await grant(stub, "bob", "vip", duration={"seconds": 3600})
    await grant(stub, "carol", "gold")
    await stub.Revoke(pb.RevokeRequest(user_id="carol", sku="gold", idempotency_key="r"), metadata=bearer(WRITER_KEY))
    await asyncio.sleep(0.1)  # bob's pass has expired
    pairs = [
        ("alice", "gold"), ("bob", "pass"), ("alice", "skin"), ("nobody", "gold"), ("bob", "vip"),
        ("carol", "gold"), ("alice", "none"), ("alice", "gold"), ("bob", "pass"), ("ünïcode-😀", "gold"),
    ]  # fmt: skip
    answer = await stub.CheckEntitlements(checks(*pairs), metadata=bearer(READER_KEY))
    assert len(answer.results) == len(pairs)
    for (user_id, sku), result in zip(pairs, answer.results, strict=True):
        single = await stub.CheckEntitlement(
            pb.CheckEntitlementRequest(user_id=user_id, sku=sku), metadata=bearer(READER_KEY)
        )
        assert result == single, (user_id, sku)
    assert [r.active for r in answer.results] == [True, False, True, False, True, False, False, True, False, False]
    assert answer.results[1].entitlement.kind == TIME_LIMITED, "an expired item still carries its entitlement"
    assert not answer.results[5].HasField("entitlement"), "a revoked item carries none"
    assert sample(service, "entitlements_rpc_requests_total", method="CheckEntitlements", code="OK") == 1


BAD_REQUESTS = {
    "checks: must hold at least one (user_id, sku) pair": checks(),
    "checks: must hold at most 1,000 pairs, not 1,001": checks(*[("p", "gold")] * 1001),
    "checks[3].sku: is required": checks(("p", "a"), ("p", "b"), ("q", "a"), ("q", "")),
    "checks[0].user_id: is required": checks(("", "gold")),
    "checks[999].user_id: must be at most 256 bytes": checks(*[("p", "gold")] * 999, ("x" * 257, "gold")),
    "checks[1].sku: must not contain control characters": checks(("p", "gold"), ("p", "go\x00ld")),
    "checks[2].user_id: must not contain control characters": checks(("p", "a"), ("q", "b"), ("p\n", "a")),
    "project_id: must be": checks(("p", "gold"), project_id=-1),
    "project_id: 999 is not a project this service serves": checks(("p", "gold"), project_id=999),
}


async def test_every_bad_field_is_named_and_nothing_is_read(
    service: Service, stub: pb_grpc.EntitlementServiceAsyncStub, redis_client: RedisClient
) -> None:
    """No pair, 1,001 pairs, a bad identifier anywhere (the 1,000th pair included), a bad project: INVALID_ARGUMENT
    naming it, and not one HMGET sent."""
    await stub.CheckEntitlements(checks(("p", "gold")), metadata=bearer(READER_KEY))
    hmgets = await hmget_calls(redis_client)
    for message, request in BAD_REQUESTS.items():
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CheckEntitlements(request, metadata=bearer(READER_KEY))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, message
        assert (refused.value.details() or "").startswith(message), refused.value.details()
    assert await hmget_calls(redis_client) == hmgets
    full = await stub.CheckEntitlements(checks(*[(f"p{i}", "gold") for i in range(1000)]), metadata=bearer(READER_KEY))
    assert len(full.results) == 1000


async def test_keys_scopes_and_projects_are_those_of_every_read(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, redis_client: RedisClient
) -> None:
    """No key or an unknown one: UNAUTHENTICATED; a key without `read` or not bound to the project:
    PERMISSION_DENIED; the same player in two projects is two players; none of it writes anything."""
    keys = parse_api_keys(
        f"writer:{hash_key(WRITER_KEY)}:read,write\nreader:{hash_key(READER_KEY)}:read\n"
        f"grantor:{hash_key(WRITE_ONLY_KEY)}:write\nother:{hash_key(OTHER_PROJECT_KEY)}:read,write:{OTHER}"
    )
    service = await service_factory(**redis_server.settings, api_keys=keys, projects=served(PROJECT, OTHER))
    assert service.endpoints is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.endpoints.grpc_port}") as channel:
        stub = pb_grpc.EntitlementServiceStub(channel)
        await grant(stub, "p", "gold", quantity=3, project_id=PROJECT)
        changes = await store_changes(redis_client)
        refusals = [
            (None, grpc.StatusCode.UNAUTHENTICATED, checks(("p", "gold"), project_id=PROJECT)),
            (bearer("no-such-key-0123456789"), grpc.StatusCode.UNAUTHENTICATED, checks(("p", "gold"))),
            (bearer(WRITE_ONLY_KEY), grpc.StatusCode.PERMISSION_DENIED, checks(("p", "gold"), project_id=PROJECT)),
            (bearer(OTHER_PROJECT_KEY), grpc.StatusCode.PERMISSION_DENIED, checks(("p", "gold"), project_id=PROJECT)),
            (bearer(READER_KEY), grpc.StatusCode.INVALID_ARGUMENT, checks(("p", "gold"))),  # two projects, no default
        ]
        for metadata, code, request in refusals:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CheckEntitlements(request, metadata=metadata)
            assert refused.value.code() == code, (metadata, refused.value.details())
        assert await store_changes(redis_client) == changes
        in_a = await stub.CheckEntitlements(checks(("p", "gold"), project_id=PROJECT), metadata=bearer(READER_KEY))
        in_b = await stub.CheckEntitlements(checks(("p", "gold")), metadata=bearer(OTHER_PROJECT_KEY))  # its project
        assert in_a.results[0].active
        assert in_a.results[0].entitlement.quantity == 3
        assert not in_b.results[0].active
        assert not in_b.results[0].HasField("entitlement")


async def test_redis_down_is_unavailable_then_served_again(
    service: Service, stub: pb_grpc.EntitlementServiceAsyncStub, embedded_server: EmbeddedRedis
) -> None:
    """While Redis does not answer, CheckEntitlements is UNAVAILABLE (retryable) within the store timeout; once it
    answers again, so does the call."""
    await grant(stub, "p", "gold", quantity=2)
    assert embedded_server.pid is not None
    os.kill(embedded_server.pid, signal.SIGSTOP)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CheckEntitlements(checks(("p", "gold"), ("q", "gold")), metadata=bearer(READER_KEY), timeout=5)
    finally:
        os.kill(embedded_server.pid, signal.SIGCONT)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
    await embedded_server.stop()
    with pytest.raises(grpc.aio.AioRpcError) as stopped:
        await stub.CheckEntitlements(checks(("p", "gold")), metadata=bearer(READER_KEY), timeout=5)
    assert stopped.value.code() == grpc.StatusCode.UNAVAILABLE, stopped.value.details()
    await embedded_server.start()
    answer = await stub.CheckEntitlements(checks(("p", "gold")), metadata=bearer(READER_KEY), timeout=5)
    assert answer.results[0].entitlement.quantity == 2


async def test_pairs_are_read_again_after_redis_forgot_the_read_script(
    store: EntitlementStore, redis_client: RedisClient
) -> None:
    """A read script Redis no longer holds (a restart, SCRIPT FLUSH) is loaded again and the pairs answered."""
    await store.grant(GrantCommand(PROJECT, "p", "gold", 0, 3, 0, "k1"), "test")
    assert [s and s[1] for s in await store.get_many(PROJECT, [("p", "gold"), ("q", "gold")])] == [3, None]
    await redis_client.script_flush()
    assert [s and s[1] for s in await store.get_many(PROJECT, [("p", "gold"), ("q", "gold")])] == [3, None]
