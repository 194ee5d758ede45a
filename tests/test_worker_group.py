"""One service process per core (`ENTITLEMENTS_PROCESSES`, `server.group`): real `python -m server` groups on free
ports: both workers serve the one port, a killed worker comes back while the port keeps answering, SIGTERM drains
them all, a second service on the port is refused, the events are shared by the consumer members and applied once,
each worker's metrics are its own, health is the truth in every worker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from entitlements import AsyncEntitlementsClient
from entitlements.v1 import entitlements_pb2 as pb
from entitlements.v1 import entitlements_pb2_grpc as pb_grpc
from server.auth import hash_key
from tests.helpers.events import PARTITIONS, drained, event_log, order_event
from tests.helpers.processes import ROOT
from tests.helpers.services import API_KEYS, PROJECT, READER_KEY, WRITER_KEY
from tests.helpers.stores import StoreUnderTest
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

KEYS = "\n".join(
    f"{name}:{hash_key(key)}:{scopes}"
    for name, key, scopes in (("writer", WRITER_KEY, "read,write"), ("reader", READER_KEY, "read"))
)
assert len(API_KEYS) == 2
GroupFactory = Callable[..., Awaitable["Group"]]
#: A channel of its own connection: gRPC core otherwise shares connections between channels to one target (its
#: global subchannel pool), and a "new" channel could reuse one to a worker that was just killed.
FRESH = [("grpc.use_local_subchannel_pool", 1)]
AUTH = (("authorization", f"Bearer {READER_KEY}"),)
CHECK_OK = {"method": "CheckEntitlement", "code": "OK"}


def free_ports(count: int) -> int:
    """The first of `count` consecutive TCP ports free on 127.0.0.1 right now."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + count > 65535:
            continue
        try:
            for port in range(first + 1, first + count):
                with socket.socket() as other:
                    other.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise AssertionError(f"no {count} consecutive free ports")


#: What a worker's `service_started` says of a store that its group's parent runs.
STORE_OF_PARENT = {"redis": "embedded", "redis_owner": "group_parent"}


def store_of(line: dict[str, object]) -> dict[str, object]:
    """The store a `service_started` line names, and who runs it."""
    return {"redis": line["redis"], "redis_owner": line.get("redis_owner", "absent")}


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class Group:
    """A `python -m server` process and what it was started with."""

    process: asyncio.subprocess.Process
    grpc_port: int
    log_path: Path
    env: dict[str, str] = field(repr=False)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def lines(self, event: str) -> list[dict[str, object]]:
        """The JSON log lines of `event`, parent's and workers'."""
        found = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{") and f'"event": "{event}"' in line:
                found.append(json.loads(line))
        return found

    def worker_pids(self) -> dict[int, int]:
        """Worker index -> pid, of the latest start of each (from the parent's `worker_started` lines)."""
        return {int(str(line["index"])): int(str(line["pid"])) for line in self.lines("worker_started")}

    def metrics_address(self, offset: int) -> str:
        """The parent's metrics address (offset 0) or worker i's (offset 1 + i), latest start, from the logs (each
        process binds a free port: ports chosen here could be taken by anything on a shared machine meanwhile)."""
        if offset == 0:
            return str(self.lines("group_started")[-1]["metrics"])
        started = [line for line in self.lines("service_started") if line.get("worker") == offset - 1]
        return str(started[-1]["metrics"])

    async def metrics(self, offset: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The samples of the parent's endpoint (offset 0) or worker i's (offset 1 + i)."""
        url = f"http://{self.metrics_address(offset)}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            text = await response.text()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                async with asyncio.timeout(30):
                    await self.process.wait()
            except TimeoutError:
                os.killpg(self.process.pid, signal.SIGKILL)
        return await self.process.wait()


async def start_group(tmp_path: Path, name: str = "group", *, wait: bool = True, **overrides: str) -> Group:
    """`python -m server` with 2 processes (unless `overrides` say), the embedded store in its own data directory
    (unless REDIS_URL is given), free ports, JSON logs in `<name>.log`."""
    grpc_port = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENTITLEMENTS_", "REDIS_"))}
    env.update(
        ENTITLEMENTS_PROCESSES="2",
        ENTITLEMENTS_API_KEYS=KEYS,
        ENTITLEMENTS_XSOLLA_PROJECT_ID=str(PROJECT),
        ENTITLEMENTS_GRPC_PORT=str(grpc_port),
        ENTITLEMENTS_METRICS_PORT="0",
        ENTITLEMENTS_WORKER_METRICS_PORT="0",
        ENTITLEMENTS_HTTP_PORT="0",
        ENTITLEMENTS_CONSOLE_ENABLED="false",
        ENTITLEMENTS_RECONCILE_SWEEPER="false",
        ENTITLEMENTS_DATA_DIR=str(tmp_path / f"{name}-data"),
        ENTITLEMENTS_LOG_JSON="1",
        ENTITLEMENTS_SHUTDOWN_GRACE_S="3",
        ENTITLEMENTS_HEALTH_CHECK_INTERVAL_S="0.2",
        ENTITLEMENTS_REDIS_TIMEOUT_S="0.5",
    )
    env.update(overrides)
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", env=env, stdout=log, stderr=log, cwd=ROOT, start_new_session=True
        )
    group = Group(process, int(env["ENTITLEMENTS_GRPC_PORT"]), log_path, env)
    if wait:
        try:
            await eventually(
                lambda: process.returncode is not None or bool(group.lines("group_started")),
                timeout_s=90,
                what="the group to start",
            )
            assert process.returncode is None, log_path.read_text()[-3000:]
        except BaseException:
            await group.stop()
            raise
    return group


@pytest.fixture
async def groups(tmp_path: Path) -> AsyncIterator[GroupFactory]:
    """A factory of groups (`start_group`), each stopped at the end."""
    started: list[Group] = []

    async def factory(name: str = "group", *, wait: bool = True, **overrides: str) -> Group:
        group = await start_group(tmp_path, name, wait=wait, **overrides)
        started.append(group)
        return group

    yield factory
    for group in started:
        await group.stop()


async def check_on_fresh_connections(target: str, calls: int) -> list[str]:
    """`calls` CheckEntitlement calls, each on a connection of its own; the error codes of those that failed."""
    failures = []
    for n in range(calls):
        async with grpc.aio.insecure_channel(target, options=FRESH) as channel:
            check = pb_grpc.EntitlementServiceStub(channel).CheckEntitlement
            try:
                await check(pb.CheckEntitlementRequest(user_id=f"player-{n}", sku="gold"), metadata=AUTH, timeout=5.0)
            except grpc.aio.AioRpcError as exc:  # collected for the assertion's message
                failures.append(f"{exc.code().name}: {exc.details()}")
    return failures


async def health_on_fresh_connections(target: str, calls: int) -> set[int]:
    """The health statuses answered on `calls` connections of their own."""
    statuses = set()
    for _ in range(calls):
        async with grpc.aio.insecure_channel(target, options=FRESH) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5.0)
            statuses.add(int(reply.status))
    return statuses


async def test_both_workers_serve_the_port_and_count_their_own_calls(groups: GroupFactory) -> None:
    """With 2 processes, 40 connections land on both workers (each counts its own calls on its own metrics port,
    the two counts add up to the calls made), the parent reports 2 workers running, every log line of a worker
    carries its index, and each worker's start says its store is the embedded one its parent runs."""
    group = await groups()
    assert await check_on_fresh_connections(group.target, 40) == []
    counts = [
        (await group.metrics(1 + i)).get(("entitlements_rpc_requests_total", tuple(sorted(CHECK_OK.items()))), 0)
        for i in range(2)
    ]
    assert sum(counts) == 40, counts
    assert min(counts) > 0, counts
    parent = await group.metrics(0)
    assert parent[("entitlements_workers_running", ())] == 2
    assert parent[("entitlements_workers_configured", ())] == 2
    assert parent[("entitlements_embedded_store_up", ())] == 1
    rpc_lines = group.lines("rpc")
    assert {line["worker"] for line in rpc_lines} == {0, 1}
    assert {line.get("worker") for line in group.lines("service_started")} == {0, 1}
    assert len({line["consumer"] for line in group.lines("service_started")}) == 2  # one member each
    assert [line["redis"] for line in group.lines("group_started")] == ["embedded"]
    assert [store_of(line) for line in group.lines("service_started")] == [STORE_OF_PARENT] * 2


async def test_a_killed_worker_is_restarted_while_the_port_keeps_answering(groups: GroupFactory) -> None:
    """SIGKILL of one worker: every call on a new connection still succeeds (the other worker has the port), the
    parent logs the exit, starts a new worker after a backoff and counts the restart."""
    group = await groups()
    before = group.worker_pids()
    os.kill(before[1], signal.SIGKILL)
    # Connections the kernel queued on the dying worker's socket before it closed are reset (a client retries
    # them); once it is gone, only the living worker's socket takes connections. Gone: reaped by the parent, which
    # waits for every thread (the pid is a zombie, not alive, while the other threads still hold its sockets).
    await eventually(lambda: bool(group.lines("worker_exited")), what="the parent to reap the killed worker")
    assert await check_on_fresh_connections(group.target, 20) == []
    await eventually(lambda: group.worker_pids()[1] != before[1], timeout_s=60, what="worker 1 to be restarted")
    await eventually(lambda: bool(group.lines("worker_restarted")), timeout_s=10, what="the restart to be logged")
    exited = group.lines("worker_exited")
    assert [(line["index"], line["signal"]) for line in exited] == [(1, "SIGKILL")]
    parent = await group.metrics(0)
    assert parent[("entitlements_worker_restarts_total", ())] == 1
    assert parent[("entitlements_workers_running", ())] == 2
    assert await check_on_fresh_connections(group.target, 20) == []
    # The restarted worker, too, says that its store is its parent's.
    assert [store_of(line) for line in group.lines("service_started")] == [STORE_OF_PARENT] * 3


async def test_sigterm_drains_every_worker_and_the_parent_exits_zero(groups: GroupFactory) -> None:
    """SIGTERM to the parent: each worker stops gracefully (its consumer stopped, `service_stopped`), the embedded
    store stops after them, the parent exits 0 and leaves no process behind."""
    group = await groups()
    pids = group.worker_pids()
    group.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        assert await group.process.wait() == 0
    assert {line["worker"] for line in group.lines("service_stopped")} == {0, 1}
    assert {line["worker"] for line in group.lines("consumer_stopped")} == {0, 1}
    assert group.lines("embedded_redis_stopped")
    assert group.lines("group_stopped")
    assert not any(alive(pid) for pid in pids.values())


async def test_a_second_service_on_the_same_port_is_refused(groups: GroupFactory) -> None:
    """While a group runs, a second group on its gRPC port exits non-zero naming the port, and so does a single
    service (which binds without SO_REUSEPORT); the first group kept every connection."""
    group = await groups()
    for name, processes in (("second-group", "2"), ("single", "1")):
        intruder = await groups(
            name, wait=False, ENTITLEMENTS_GRPC_PORT=str(group.grpc_port), ENTITLEMENTS_PROCESSES=processes
        )
        async with asyncio.timeout(60):
            assert await intruder.process.wait() != 0
        said = intruder.log_path.read_text()
        if processes == "2":  # refused by the parent's check, before any worker starts
            assert f"cannot start: ENTITLEMENTS_GRPC_PORT: 127.0.0.1:{group.grpc_port} is in use" in said, said
        else:  # a single service binds without SO_REUSEPORT: gRPC cannot bind beside the group's sockets
            assert f"cannot start: ENTITLEMENTS_GRPC_PORT: cannot listen on 127.0.0.1:{group.grpc_port}" in said, said
            assert "Traceback" not in said
    assert await check_on_fresh_connections(group.target, 20) == []
    counts = [
        (await group.metrics(1 + i)).get(("entitlements_rpc_requests_total", tuple(sorted(CHECK_OK.items()))), 0)
        for i in range(2)
    ]
    assert sum(counts) == 20


async def test_a_worker_that_cannot_start_fails_the_group(groups: GroupFactory, tmp_path: Path) -> None:
    """Worker 0 cannot bind the console's port (taken): the parent stops the other worker and exits 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        group = await groups(
            "console",
            wait=False,
            ENTITLEMENTS_CONSOLE_ENABLED="true",
            ENTITLEMENTS_CONSOLE_PORT=str(taken.getsockname()[1]),
        )
        async with asyncio.timeout(90):
            assert await group.process.wait() == 1
    text = group.log_path.read_text()
    assert "cannot start: worker 0" in text
    assert group.lines("embedded_redis_stopped")


async def test_metrics_ports_that_overlap_are_refused(groups: GroupFactory) -> None:
    """Workers' metrics ports that would include the parent's: exit status 2, the setting named, nothing started."""
    group = await groups(
        "overlap", wait=False, ENTITLEMENTS_WORKER_METRICS_PORT="9000", ENTITLEMENTS_METRICS_PORT="9001"
    )
    async with asyncio.timeout(60):
        assert await group.process.wait() == 2
    said = group.log_path.read_text()
    assert "configuration error: ENTITLEMENTS_METRICS_PORT 9001 is among the workers' metrics ports (9000-9001" in said
    assert not group.lines("worker_started")


async def test_health_says_not_serving_in_every_worker_while_the_store_is_frozen(groups: GroupFactory) -> None:
    """The group's Valkey stopped (SIGSTOP): every connection's health check answers NOT_SERVING, whichever worker
    takes it; once it runs again, SERVING everywhere."""
    group = await groups()
    valkey = int(str(group.lines("embedded_redis_started")[0]["pid"]))
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    os.kill(valkey, signal.SIGSTOP)
    try:
        await asyncio.sleep(2.0)  # each worker's check times out (0.5 s) and reports
        assert await health_on_fresh_connections(group.target, 20) == {not_serving}
        stores = [(await group.metrics(1 + i))[("entitlements_store_up", ())] for i in range(2)]
        assert stores == [0, 0]
    finally:
        os.kill(valkey, signal.SIGCONT)

    async def all_serving() -> bool:
        return await health_on_fresh_connections(group.target, 10) == {serving}

    await eventually(all_serving, timeout_s=15, what="every worker to serve again")


PLAYERS, ORDERS = 30, 300


async def append_orders(store: StoreUnderTest, between_bursts: Callable[[int], Awaitable[None]]) -> None:
    """`ORDERS` order_paid events of one gold each over `PLAYERS` players, appended as the gateway does in bursts
    of 10; `between_bursts(burst)` runs after each."""
    redis = store.client()
    try:
        log = event_log(redis)  # type: ignore[arg-type]  # a cluster client serves the event log as well
        for burst in range(ORDERS // 10):
            for n in range(burst * 10, burst * 10 + 10):
                event = order_event("paid", f"order-{n}", f"player-{n % PLAYERS}", [("gold", 1)])
                await log.append(event, raw=b"{}")
            await between_bursts(burst)
    finally:
        await redis.aclose()


async def applied_once(group: Group, store: StoreUnderTest) -> None:
    """Waits until every player holds exactly the gold of their orders (never more: an order applied twice fails at
    once) and nothing is left pending or undelivered in the consumer group."""
    async with AsyncEntitlementsClient(group.target, api_key=READER_KEY) as client:

        async def applied() -> bool:
            for p in range(PLAYERS):
                held = (await client.check_entitlement(f"player-{p}", "gold")).entitlement.quantity
                assert held <= ORDERS // PLAYERS, f"player-{p} holds {held} gold: an order applied twice"
                if held < ORDERS // PLAYERS:
                    return False
            return True

        await eventually(applied, timeout_s=45, what="every order to be applied")
    redis = store.client()
    try:
        await drained(redis, timeout_s=15)  # type: ignore[arg-type]  # a cluster client reads the groups as well
    finally:
        await redis.aclose()


def consuming(store: StoreUnderTest) -> dict[str, str]:
    return {
        "REDIS_URL": store.url,
        "REDIS_CLUSTER": "true" if store.cluster else "false",
        "ENTITLEMENTS_EVENT_PARTITIONS": str(PARTITIONS),
        "ENTITLEMENTS_CONSUMER_BLOCK_MS": "50",
        "ENTITLEMENTS_CONSUMER_CLAIM_IDLE_S": "1",
    }


async def test_events_are_shared_by_the_workers_consumers_and_applied_once(
    groups: GroupFactory, redis_server: StoreUnderTest
) -> None:
    """300 orders appended in bursts: both workers' consumer members apply some (each counts its own), every order
    is applied once, nothing is left pending; with REDIS_URL set, every process says its store is external."""
    group = await groups(**consuming(redis_server))
    assert [line["redis"] for line in group.lines("group_started")] == ["external"]
    assert [store_of(line) for line in group.lines("service_started")] == [
        {"redis": "external", "redis_owner": None}
    ] * 2
    await append_orders(redis_server, lambda burst: asyncio.sleep(0.05))
    await applied_once(group, redis_server)
    events = []
    for i in range(2):
        samples = await group.metrics(1 + i)
        applied = ("result", "applied")
        events.append(
            sum(v for (name, labels), v in samples.items() if name == "entitlements_events_total" and applied in labels)
        )
    assert sum(events) == ORDERS, events
    assert min(events) > 0, events


async def test_a_worker_killed_while_events_flow_loses_and_doubles_nothing(
    groups: GroupFactory, redis_server: StoreUnderTest
) -> None:
    """Worker 1 SIGKILLed halfway through 300 orders (what it had read but not acknowledged is claimed by worker 0
    after the claim idle time, as between replicas; its restarted self joins as a new member): every order is
    applied once, nothing left pending."""
    group = await groups(**consuming(redis_server))
    victim = group.worker_pids()[1]

    async def between(burst: int) -> None:
        if burst == ORDERS // 20:
            os.kill(victim, signal.SIGKILL)
        await asyncio.sleep(0.02)

    await append_orders(redis_server, between)
    await applied_once(group, redis_server)
    await eventually(lambda: group.worker_pids()[1] != victim, timeout_s=30, what="worker 1 to be restarted")
