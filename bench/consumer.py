"""Webhook events applied per second by the service's consumer, against applying the same events directly.

`measure_consumer_throughput()` starts a private Valkey, stores `events` distinct order_paid events on the
event streams (as the gateway does, through `EventLog`), then starts the real service and times how long its
consumer takes to apply and acknowledge all of them. The baseline, measured in the same run on another set of
as many events, applies them straight through `Fulfillment.apply` with one worker per partition (the consumer's
own concurrency): same Lua scripts and change feed, order index and status publication, without the stream read,
claim and XACK, one event at a time (one round trip and one durability wait each). The consumer applies what each
read returns as one batch (one round trip and one wait per node for its writes), so the ratio is what the stream
costs less what the batches save; `durability_waits` counts the consumer's waits.

    result = asyncio.run(measure_consumer_throughput(events=5000))
    result.events_per_s, result.baseline_events_per_s, result.ratio

`python -m bench.consumer [--events N] [--partitions P] [--valkey-core C] [--cluster] [--write-durability M]`
prints the result as one JSON object; with `--cluster` both measurements store on a local Redis Cluster
(`bench.stores`) instead of the private Valkey. Both measurements wait for each write's durability as the service
does (`ENTITLEMENTS_WRITE_DURABILITY`, `auto` unless `--write-durability` says otherwise; the mode it decided is in
the result). `run_consumer()`, which `python -m bench` calls, starts that command as a child process pinned to
the server core, with its Valkey moved to the load core, as the rest of the benchmark places the service and its
store. The
service's per-event log lines are at info level; the command runs at warning, so they are not part of the
measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from bench.cores import pin_process
from bench.processes import Child
from bench.report import simple_table
from bench.servers import ROOT, Placement
from bench.stores import BenchCluster
from core import logs
from core.connections import RedisClient, connect
from core.durability import SETTING_MODES
from core.eventlog import EventLog
from core.keys import CONSUMER_GROUP, EventKeys
from core.projects import CATALOG_FILE, Project, Projects
from entitlements.v1 import events_pb2 as ev
from server.app import Service
from server.catalog import Catalog, Catalogs
from server.config import ConsoleSettings, ConsumerSettings, HttpSettings, Settings
from server.durability import write_durability
from server.embedded import EmbeddedRedis
from server.feed import FeedWriter
from server.fulfillment import Fulfillment
from server.metrics import CatalogMetrics
from server.order_effects import OrderEffects
from server.reconcile import OrderIndex
from server.status_channel import OrderStatusPublisher
from server.store import EntitlementStore

CATALOG = Catalog.from_mapping(
    {"items": {"gold": {"kind": "consumable"}, "vip_pass": {"kind": "time_limited", "period": "30d"}}}
)
#: Every project with CATALOG as its local catalog file.
PROJECTS = Projects.single(None, Project(0, catalog_source=CATALOG_FILE))


@dataclass(frozen=True)
class ConsumerBenchResult:
    """Events applied per second by the consumer, and by direct application (the baseline)."""

    events: int
    partitions: int
    seconds: float
    events_per_s: float
    baseline_seconds: float
    baseline_events_per_s: float
    write_durability: str = "none"
    #: the consumer's durability waits (round trips that wrote and waited): one per node of each batch
    durability_waits: int = 0

    @property
    def ratio(self) -> float:
        """Consumer throughput over the baseline's (1.0: the stream costs nothing)."""
        return self.events_per_s / self.baseline_events_per_s if self.baseline_events_per_s else 0.0


def _order(n: int, prefix: str, users: int) -> ev.WebhookEvent:
    event = ev.WebhookEvent(
        event_id=f"xsolla:1:order:{prefix}{n}:paid",
        type=ev.EVENT_TYPE_ORDER_PAID,
        provider="xsolla",
        project_id=1,
        user_id=f"bench-player-{n % users}",
        notification_type="order_paid",
        order=ev.OrderEvent(order_id=f"{prefix}{n}", status="paid", currency="USD", amount="4.99"),
    )
    event.order.lines.add(sku="gold", type="virtual_currency", quantity=100, amount="1.99")
    event.order.lines.add(sku="vip_pass", type="virtual_good", quantity=1, amount="3.00")
    event.received_at.GetCurrentTime()
    return event


async def _append_all(log: EventLog, events: list[ev.WebhookEvent], concurrency: int = 64) -> None:
    for start in range(0, len(events), concurrency):
        await asyncio.gather(*(log.append(event, b"{}") for event in events[start : start + concurrency]))


async def _drained(redis: RedisClient, streams: list[str]) -> bool:
    for stream in streams:
        if not await redis.exists(stream):
            return False
        groups = [g for g in await redis.xinfo_groups(stream) if g["name"] == CONSUMER_GROUP.encode()]
        if not groups or int(groups[0]["pending"]) or int(groups[0]["lag"] or 0):
            return False
    return True


async def _baseline(
    redis: RedisClient, events: list[ev.WebhookEvent], partitions: int, settings: Settings
) -> tuple[float, str]:
    cluster = settings.redis_cluster
    durability = await (await write_durability(redis, settings)).current()
    # The change feed as the service writes it: every change into the player's feed partition, in the write script
    # on a single server, by the relay after the write on a cluster. Without it the baseline did less than the
    # consumer, and left its players' versions ahead of their feed: the consumer's first write of each then found
    # a gap and read the player's ledger back to fill it.
    feed = FeedWriter(redis, settings, CollectorRegistry())
    store = EntitlementStore(
        redis, timeout_s=5.0, idempotency_ttl_ms=86_400_000, durability=durability, feed=feed.relay
    )
    catalogs = Catalogs(
        redis,
        PROJECTS,
        {0: CATALOG},
        None,
        CatalogMetrics(CollectorRegistry(), by_project=False),
        refresh_interval_s=600.0,
        timeout_s=5.0,
    )
    # What the service's consumer does per event, minus the stream: the store, the order index, the publication.
    effects = OrderEffects(
        redis, OrderIndex(redis, timeout_s=5.0), OrderStatusPublisher(redis, cluster=cluster), timeout_s=5.0
    )
    fulfillment = Fulfillment(store, catalogs, PROJECTS, effects)

    async def worker(share: list[ev.WebhookEvent]) -> None:
        for event in share:
            await fulfillment.apply(event)

    started = time.perf_counter()
    await asyncio.gather(*(worker(events[p::partitions]) for p in range(partitions)))
    elapsed = time.perf_counter() - started
    await feed.relay.close(5.0)  # the relay's queue (a cluster's), sent after the window as the service's is
    return elapsed, durability.mode


async def measure_consumer_throughput(
    events: int = 5000,
    *,
    partitions: int = 4,
    users: int = 1000,
    timeout_s: float = 300.0,
    valkey_cores: Sequence[int] | None = None,
    cluster: bool = False,
    durability: str = "auto",
    appendfsync: str = "always",
) -> ConsumerBenchResult:
    """Times the consumer applying `events` stored order_paid events (two lines each) for `users` players.

    Args:
        events: how many events each of the two measurements applies.
        partitions: event-log partitions (the consumer runs one reader per partition).
        users: distinct players the events are spread over.
        timeout_s: give up if the consumer has not drained the streams by then.
        valkey_cores: the cores to move the private Valkey (or the cluster's nodes) to once started (None: where
            this process runs).
        cluster: store on a local Redis Cluster (`bench.stores`) instead of a private Valkey.
        durability: `ENTITLEMENTS_WRITE_DURABILITY` of both measurements.
        appendfsync: the store's `appendfsync`: `always` by default, as the service's embedded store runs (under
            `everysec`, a `local` wait lasts until the next fsync, up to 1 s, and the one-at-a-time direct
            baseline collapses: a ratio of 12 was measured, which says nothing about the consumer).

    Raises:
        TimeoutError: the consumer did not apply everything within `timeout_s`.
    """
    async with contextlib.AsyncExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-consumer-")))
        redis: RedisClient
        if cluster:
            # Started on this (the event loop's) thread: its nodes get a parent-death signal from it.
            url = stack.enter_context(BenchCluster(workdir, valkey_cores, appendfsync=appendfsync)).url
            redis = connect(url, cluster=True, timeout_s=5.0, max_connections=64)
        else:
            server = EmbeddedRedis(workdir / "redis", appendfsync=appendfsync)
            await server.start()
            stack.push_async_callback(server.stop)
            if valkey_cores and server.pid is not None:
                pin_process(server.pid, valkey_cores)
            url = server.url
            redis = aioredis.Redis.from_url(url)
        stack.push_async_callback(redis.aclose)
        service: Service | None = None
        try:
            settings = replace(
                Settings(),
                redis_url=url,
                redis_cluster=cluster,
                grpc_port=0,
                metrics_port=0,
                insecure_dev_mode=True,
                event_partitions=partitions,
                projects=PROJECTS,
                local_catalogs={0: CATALOG},
                consumer=ConsumerSettings(block_ms=100, batch=128),
                console=ConsoleSettings(enabled=False),
                http=HttpSettings(enabled=False),
                redis_timeout_s=5.0,
                write_durability=durability,
            )
            baseline_events = [_order(n, "b", users) for n in range(events)]
            baseline_s, mode = await _baseline(redis, baseline_events, partitions, settings)
            log = EventLog(redis, partitions=partitions)
            await _append_all(log, [_order(n, "c", users) for n in range(events)])
            streams = [EventKeys(1, partition).stream for partition in range(partitions)]
            service = Service(settings)
            started = time.perf_counter()
            await service.start()
            deadline = started + timeout_s
            while not await _drained(redis, streams):
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"the consumer did not apply {events} events within {timeout_s:g} s")
                await asyncio.sleep(0.005)
            seconds = time.perf_counter() - started
            waits = int(
                service.registry.get_sample_value("entitlements_write_durability_wait_seconds_count", {"mode": mode})
                or 0
            )
        finally:
            if service is not None:
                await service.stop(grace_s=1.0)
    return ConsumerBenchResult(
        events=events,
        partitions=partitions,
        seconds=round(seconds, 4),
        events_per_s=round(events / seconds, 1),
        baseline_seconds=round(baseline_s, 4),
        baseline_events_per_s=round(events / baseline_s, 1),
        write_durability=mode,
        durability_waits=waits,
    )


def run_consumer(
    *,
    placement: Placement,
    workdir: Path,
    events: int = 5000,
    partitions: int = 4,
    timeout_s: float = 300.0,
    cluster: bool = False,
    durability: str = "auto",
) -> ConsumerBenchResult:
    """Runs `python -m bench.consumer` pinned to the server core, its Valkey (or with `cluster` its Redis Cluster's
    nodes) on the load core; returns its result.

    Raises:
        RuntimeError: the child failed or did not finish within `timeout_s`.
    """
    argv = [sys.executable, "-m", "bench.consumer", f"--events={events}", f"--partitions={partitions}"]
    if placement.valkey:
        argv.append(f"--valkey-core={placement.valkey[0]}")
    if cluster:
        argv.append("--cluster")
    argv.append(f"--write-durability={durability}")
    child = Child("consumer benchmark", argv, cores=placement.server, log_path=workdir / "consumer.log", cwd=ROOT)
    try:
        answer = child.receive(timeout_s)
    finally:
        # Its Valkey runs in a session of its own: remembered here so that it is killed even if the child
        # dies without stopping it.
        child.adopt_descendants()
        child.stop()
    fields = {field.name for field in dataclasses.fields(ConsumerBenchResult)}
    return ConsumerBenchResult(**{name: value for name, value in answer.items() if name in fields})


def consumer_table(result: ConsumerBenchResult) -> str:
    """The consumer's result next to its baseline, as a fixed-width text table."""
    header = ("webhook events applied", "events", "seconds", "events/s", "ratio")
    rows = [
        (
            f"service consumer ({result.partitions} partitions, writes: {result.write_durability}, "
            f"{result.durability_waits:,} waits)",
            f"{result.events:,}",
            f"{result.seconds:.2f}",
            f"{result.events_per_s:,.0f}",
            f"{result.ratio:.2f}",
        ),
        (
            "baseline: Fulfillment.apply, one worker per partition",
            f"{result.events:,}",
            f"{result.baseline_seconds:.2f}",
            f"{result.baseline_events_per_s:,.0f}",
            "",
        ),
    ]
    return simple_table(header, rows)


async def _main(args: argparse.Namespace) -> ConsumerBenchResult:
    # SIGTERM or SIGINT (the runner stopping us) cancel the measurement, so that its `finally` stops Valkey,
    # which runs in a session of its own and would outlive us.
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    return await measure_consumer_throughput(
        args.events,
        partitions=args.partitions,
        users=args.users,
        valkey_cores=None if args.valkey_core is None else (args.valkey_core,),
        cluster=args.cluster,
        durability=args.write_durability,
        appendfsync=args.appendfsync,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.consumer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--valkey-core", type=int, default=None, help="move the private Valkey to this core")
    parser.add_argument("--cluster", action="store_true", help="on a local Redis Cluster instead of one Valkey")
    parser.add_argument(
        "--write-durability",
        choices=SETTING_MODES,
        default="auto",
        help="what each write waits for, as ENTITLEMENTS_WRITE_DURABILITY (default auto)",
    )
    parser.add_argument("--appendfsync", choices=("always", "everysec", "no"), default="always")
    args = parser.parse_args(argv)
    logs.configure("warning", json=True)
    try:
        result = asyncio.run(_main(args))
    except asyncio.CancelledError:
        return 130
    print(json.dumps({**asdict(result), "ratio": round(result.ratio, 3)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
