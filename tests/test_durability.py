"""Nothing is lost across restarts, and a dead or stuck Redis is a prompt, retryable UNAVAILABLE."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core.connections import bounded
from core.errors import StoreUnavailable
from core.keys import UserKeys
from entitlements import AsyncEntitlementsClient, UnavailableError
from server.app import Service
from server.embedded import EmbeddedRedis, server_binary
from tests.helpers.services import PROJECT, ClientFactory, ServiceFactory
from tests.helpers.waiting import eventually
from tools.cluster import LocalCluster

pytestmark = pytest.mark.slow


async def test_data_survives_service_and_embedded_redis_restart(
    service_factory: ServiceFactory, client_factory: ClientFactory, tmp_path: Path
) -> None:
    """Grants and idempotency records survive stopping the service and its embedded Redis, then starting again."""
    data_dir = tmp_path / "var"
    first = await service_factory(redis_url=None, data_dir=data_dir)
    assert first.embedded is not None
    client = await client_factory(first)
    await client.grant("player-1", "gold", quantity=5, idempotency_key="order-9")
    await client.grant("player-1", "pass", duration=timedelta(days=1))
    await first.stop()
    assert (data_dir / "appendonlydir").is_dir()

    second = await service_factory(redis_url=None, data_dir=data_dir)
    client = await client_factory(second)
    assert (await client.check_entitlement("player-1", "gold")).entitlement.quantity == 5
    assert (await client.check_entitlement("player-1", "pass")).active
    replay = await client.grant("player-1", "gold", quantity=5, idempotency_key="order-9")
    assert replay.replayed
    assert (await client.check_entitlement("player-1", "gold")).entitlement.quantity == 5


async def test_two_services_cannot_share_a_data_dir(service_factory: ServiceFactory, tmp_path: Path) -> None:
    """A second service on the same embedded data directory refuses to start instead of corrupting it."""
    await service_factory(redis_url=None, data_dir=tmp_path / "var")
    with pytest.raises(RuntimeError, match="in use by another process"):
        await service_factory(redis_url=None, data_dir=tmp_path / "var")


async def test_redis_crash_and_restart_loses_nothing(
    service: Service, client: AsyncEntitlementsClient, embedded_server: EmbeddedRedis
) -> None:
    """After Redis is killed (SIGKILL) and restarted, acknowledged grants are there and the service reconnects."""
    for i in range(20):
        await client.grant("player-1", "gold", idempotency_key=f"k{i}")
    await embedded_server.kill()
    with pytest.raises(UnavailableError):
        await client.check_entitlement("player-1", "gold", timeout_s=3.0)
    await embedded_server.start()
    check = await client.check_entitlement("player-1", "gold")
    assert check.entitlement.quantity == 20
    assert (await client.grant("player-1", "gold", idempotency_key="k3")).replayed


async def test_redis_down_is_unavailable_within_the_deadline(
    service: Service, client_factory: ClientFactory, embedded_server: EmbeddedRedis
) -> None:
    """With Redis stopped, calls fail UNAVAILABLE before the caller's deadline; a later retry applies once."""
    client = await client_factory(service, timeout_s=4.0)
    await embedded_server.stop()
    for call in (
        client.check_entitlement("player-1", "gold"),
        client.grant("player-1", "gold", idempotency_key="retry-me"),
        client.list_entitlements("player-1"),
    ):
        started = time.monotonic()
        with pytest.raises(UnavailableError, match="Redis"):
            await call
        assert time.monotonic() - started < 4.0
    await embedded_server.start()
    first = await client.grant("player-1", "gold", idempotency_key="retry-me")
    again = await client.grant("player-1", "gold", idempotency_key="retry-me")
    assert not first.replayed
    assert again.replayed
    assert (await client.check_entitlement("player-1", "gold")).entitlement.quantity == 1


async def test_a_dead_primary_is_unavailable_within_the_deadline_until_its_replica_takes_over(
    service_factory: ServiceFactory, client_factory: ClientFactory, private_cluster: LocalCluster
) -> None:
    """On a cluster, the primary of a player's slot killed: their calls fail UNAVAILABLE before the deadline while
    other primaries' players are served; once its replica is promoted, the same service reads them again with every
    replicated grant; their grants wait for a replica of the promoted node (write durability `replicas`, what auto
    decides on a cluster with replicas) and apply once the dead node is back as one, a retried grant once."""
    service = await service_factory(redis_url=private_cluster.url)
    client = await client_factory(service, timeout_s=4.0, retry_policy=None)
    primary = private_cluster.primary_for(UserKeys(PROJECT, "player-1").items)
    other = next(
        f"player-{n}"
        for n in range(2, 100)
        if private_cluster.primary_for(UserKeys(PROJECT, f"player-{n}").items) is not primary
    )
    for i in range(20):
        await client.grant("player-1", "gold", idempotency_key=f"k{i}")
    await client.grant(other, "gold")
    (replica,) = private_cluster.replicas_of(primary)
    target = int(str(primary.info("replication")["master_repl_offset"]))
    await eventually(
        lambda: int(str(replica.info("replication")["master_repl_offset"])) >= target, what="the replica in sync"
    )
    # The replica holds back until the calls below have failed: a failover takes about as long as they do.
    with replica.client() as node:
        node.config_set("cluster-replica-no-failover", "yes")
    private_cluster.kill(primary)
    started = time.monotonic()
    with pytest.raises(UnavailableError):
        await client.check_entitlement("player-1", "gold")
    with pytest.raises(UnavailableError):
        await client.grant("player-1", "gold", idempotency_key="retry-me")
    assert time.monotonic() - started < 4.0
    assert (await client.check_entitlement(other, "gold")).active
    with replica.client() as node:
        node.config_set("cluster-replica-no-failover", "no")
    await private_cluster.wait_failover_async(primary)

    async def served() -> bool:
        try:
            await client.check_entitlement("player-1", "gold", timeout_s=2.0)
        except UnavailableError:
            return False
        return True

    await eventually(served, timeout_s=20.0, what="the promoted replica to serve the player")
    assert (await client.check_entitlement("player-1", "gold")).entitlement.quantity == 20
    with pytest.raises(UnavailableError, match="not durable yet"):
        await client.grant("player-1", "gold", idempotency_key="retry-me")  # applied, not on any replica yet
    private_cluster.restart(primary)  # back as the promoted node's replica
    await asyncio.to_thread(private_cluster.wait_healthy)
    first = await client.grant("player-1", "gold", idempotency_key="retry-me")
    again = await client.grant("player-1", "gold", idempotency_key="retry-me")
    assert first.replayed  # applied by the call that was not durable in time, answered now that it is
    assert again.replayed
    assert (await client.check_entitlement("player-1", "gold")).entitlement.quantity == 21


async def test_stuck_redis_times_out_instead_of_hanging(
    service: Service, client_factory: ClientFactory, embedded_server: EmbeddedRedis
) -> None:
    """A Redis that accepts but never answers (SIGSTOP) turns into UNAVAILABLE within the store timeout."""
    client = await client_factory(service, timeout_s=5.0, retry_policy=None)
    await client.grant("player-1", "gold")
    assert embedded_server.pid is not None
    os.kill(embedded_server.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(UnavailableError, match=r"did not answer within 1 s|unavailable"):
            await client.check_entitlement("player-1", "gold")
        assert time.monotonic() - started < 3.0
    finally:
        os.kill(embedded_server.pid, signal.SIGCONT)
    assert (await client.check_entitlement("player-1", "gold")).active


async def test_health_follows_redis(service_factory: ServiceFactory, embedded_server: EmbeddedRedis) -> None:
    """The gRPC health service reports NOT_SERVING while Redis is down and SERVING again once it is back."""
    service = await service_factory(redis_url=embedded_server.url, health_check_interval_s=0.1)
    assert service.endpoints is not None
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.endpoints.grpc_port}")
    stub = health_pb2_grpc.HealthStub(channel)
    try:

        async def status() -> int:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service="entitlements.v1.EntitlementService"))
            return int(reply.status)

        async def health_is(expected: int) -> bool:
            return await status() == expected

        assert await status() == health_pb2.HealthCheckResponse.SERVING
        await embedded_server.stop()
        await eventually(
            lambda: health_is(health_pb2.HealthCheckResponse.NOT_SERVING),
            timeout_s=5.0,
            what="health to report NOT_SERVING",
        )
        await embedded_server.start()
        await eventually(
            lambda: health_is(health_pb2.HealthCheckResponse.SERVING), timeout_s=5.0, what="health to report SERVING"
        )
    finally:
        await channel.close(None)


async def test_graceful_stop_lets_in_flight_calls_finish(
    service: Service, client_factory: ClientFactory, embedded_server: EmbeddedRedis
) -> None:
    """On stop, health goes NOT_SERVING, new calls are refused, and a call already running completes."""
    client = await client_factory(service, timeout_s=5.0, retry_policy=None)
    await client.grant("player-1", "gold")
    assert embedded_server.pid is not None
    os.kill(embedded_server.pid, signal.SIGSTOP)  # hold the next call inside the service
    try:
        in_flight = asyncio.ensure_future(client.check_entitlement("player-1", "gold"))
        await asyncio.sleep(0.2)
        stopping = asyncio.ensure_future(service.stop(grace_s=5.0))
        await asyncio.sleep(0.2)
        assert not stopping.done()
    finally:
        os.kill(embedded_server.pid, signal.SIGCONT)
    assert (await in_flight).active
    await stopping
    with pytest.raises(UnavailableError):
        await client.check_entitlement("player-1", "gold", timeout_s=1.0)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"valkey-server" in cmdline.read()
    except OSError:
        return False


OWNER_SCRIPT = """
import asyncio, sys
from pathlib import Path
import redis.asyncio as aioredis
from core import logs
from server.embedded import EmbeddedRedis

async def main():
    logs.configure("warning", json=True)  # stdout carries only the pid
    server = EmbeddedRedis(Path(sys.argv[1]), appendfsync="always")
    await server.start()
    client = aioredis.Redis.from_url(server.url)
    await client.set("kept", "yes")
    print(server.pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_embedded_redis_dies_with_a_killed_service(tmp_path: Path) -> None:
    """When the process that started the embedded Valkey is killed (SIGKILL), Valkey stops too, data kept."""
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OWNER_SCRIPT, str(tmp_path / "var"), stdout=asyncio.subprocess.PIPE
    )
    assert owner.stdout is not None
    try:
        valkey_pid = int(await asyncio.wait_for(owner.stdout.readline(), 20))
    finally:
        owner.kill()
        await owner.wait()
    await eventually(
        lambda: not _alive(valkey_pid), timeout_s=5.0, what="valkey-server to stop with the process that started it"
    )
    server = EmbeddedRedis(tmp_path / "var")
    await server.start()
    try:
        client = aioredis.Redis.from_url(server.url)
        assert await client.get("kept") == b"yes"
        await client.aclose()
    finally:
        await server.stop()


async def test_an_orphaned_embedded_redis_is_stopped_before_a_new_one_starts(tmp_path: Path) -> None:
    """A Valkey still running on the data directory without its service is stopped first, never doubled."""
    first = EmbeddedRedis(tmp_path / "var")
    await first.start()
    await first.stop()
    # An orphan: the same server started on the same config, with nobody holding the data directory.
    orphan = await asyncio.create_subprocess_exec(
        server_binary(), str(tmp_path / "var" / "valkey.conf"), start_new_session=True
    )
    try:
        await eventually((tmp_path / "var" / "valkey.sock").exists, timeout_s=5.0, what="the orphan's socket")
        second = EmbeddedRedis(tmp_path / "var")
        await second.start()
        try:
            assert await asyncio.wait_for(orphan.wait(), 5) == 0, "the orphan was not stopped"
            assert second.pid != orphan.pid
            client = aioredis.Redis.from_url(second.url)
            assert await client.ping()
            await client.aclose()
        finally:
            await second.stop()
    finally:
        if orphan.returncode is None:
            orphan.kill()
            await orphan.wait()


async def test_an_error_reply_is_unavailable_where_the_caller_says_every_refusal_is(
    redis_client: aioredis.Redis,
) -> None:
    """`bounded(..., refused=...)` turns any error reply into a retryable StoreUnavailable naming the operation;
    without it the reply is the caller's to translate."""
    await redis_client.set("not-a-number", "text")  # INCR on it is an error reply
    with pytest.raises(StoreUnavailable, match=r"^Redis refused the test write: ResponseError$"):
        await bounded(redis_client.incr("not-a-number"), 2.0, refused="the test write")
    with pytest.raises(aioredis.ResponseError):
        await bounded(redis_client.incr("not-a-number"), 2.0)
