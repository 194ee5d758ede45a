"""GetOrderStatus streams held by one server process: how long N take to open, memory per stream, idle CPU.

For each N (1,000, 5,000 and 10,000 by default) and each server, on a fresh process so that one size's leftovers
do not flatter the next:

1. the server starts on the server core: the service (`python -m server`, its embedded Valkey moved to the load
   core as in the rest of the benchmark, the API key, JSON log lines to a file at the benchmark's log level), or
   the baseline, `bench.bare`, whose GetOrderStatus sends one fixed update and holds the stream: the floor of a
   held grpc.aio stream, with the service's gRPC server options;
2. for the service, N orders are stored as paid but not yet granted (the order hash the webhook consumer
   writes), one player per order and one stream per order by default: the heavy case, every stream has a
   tracker of its own (`streams_per_order` shares them);
3. watcher processes on the load core (`bench.watchers`, 4 processes with 2 connections each by default, so that
   the client is not the bottleneck) connect, and a few streams are opened and closed once to warm up the path;
4. after a settle, the server's resident memory is read (VmRSS); then every watcher opens its share of the N
   streams at the same instant, and each stream gets its first message (the stored PAID) and stays open;
5. the time to open is from that instant to the last first message; errors are streams that failed or got no
   first message within the timeout (gRPC's backlog of unaccepted calls refuses calls as CANCELLED when it
   overflows; the service raises it, see docs/ORDER_STATUS.md); the server's CPU time while they opened, per
   stream, is what accepting one and sending its first message costs;
6. once the server's RSS has settled (two readings 0.5 s apart within 0.5%), memory per stream is the RSS
   growth divided by N (the service's Valkey is a separate process and not counted);
7. the server's CPU time over a 5 s hold with every stream open and nothing happening, divided by 5: what
   holding them costs (timers, the health check, the order-status subscription's read loop);
8. the streams are cancelled and everything stopped.

`run_streams()` is what `python -m bench` calls; `python -m bench.streams` runs it alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import counters
from bench.cores import core_busy_between, core_times
from bench.processes import Child, signals_interrupt
from bench.report import simple_table
from bench.servers import BENCH_PROJECT, Placement, ServiceEndpoints, start_bare, start_service
from bench.stores import BenchCluster
from bench.usage import cpu_seconds, rss_bytes
from bench.watchers import Watchers
from core.keys import UserKeys
from entitlements import EntitlementsClient

DEFAULT_SIZES = (1000, 5000, 10_000)
SERVERS = ("bare", "service")
HOLD_S = 5.0
WARM_UP_STREAMS = 20


@dataclasses.dataclass(frozen=True)
class StreamsResult:
    """One size of the stream benchmark.

    Attributes:
        server: "service" or "bare" (the baseline: a grpc.aio server that sends one fixed update and holds).
        streams: streams opened at once (N).
        orders: distinct orders they watch (one tracker each).
        clients: "P processes x C connections".
        open_s: from the instant every watcher started its calls to the last first message.
        first_message_p50_s: the median stream's time to its first message, from the same instant.
        errors: streams that failed or got no first message, by error (empty: none).
        rss_before_mb, rss_after_mb: the server's resident memory before opening and with every stream open.
        kb_per_stream: (rss_after - rss_before) / streams, in KiB.
        server_cpu_open_s: the server's CPU time while the streams opened.
        load_core_busy_open: how busy the load core was while they opened (0..1): near 1, the clients limited it.
        hold_cpu: the server's CPU time over the hold divided by its length (cores, 0..1).
        hold_s: the hold's length.
    """

    server: str
    streams: int
    orders: int
    clients: str
    open_s: float
    first_message_p50_s: float
    errors: dict[str, int]
    rss_before_mb: float
    rss_after_mb: float
    kb_per_stream: float
    server_cpu_open_s: float
    load_core_busy_open: float
    hold_cpu: float
    hold_s: float

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def cpu_ms_per_open(self) -> float:
        """The server's CPU time per stream opened (accepted, first message sent), in ms."""
        return self.server_cpu_open_s * 1000 / self.streams


def seed_orders(endpoints: ServiceEndpoints, count: int, prefix: str) -> list[tuple[str, str]]:
    """Stores `count` orders as paid but not granted (what the consumer writes), one player each, straight into
    the service's store; a stream on one gets that state as its first message and stays open.

    Returns:
        The (order id, player id) pairs.
    """
    orders = [(f"{prefix}-order-{i}", f"{prefix}-player-{i}") for i in range(count)]
    client = endpoints.store_client()
    try:
        for start in range(0, count, 1000):
            pipe = client.pipeline(transaction=False)
            for order_id, user_id in orders[start : start + 1000]:
                pipe.hset(
                    UserKeys(BENCH_PROJECT, user_id).order(order_id),
                    mapping={"status": "paid", "granted": "0", "updated_at_ms": 1},
                )
            pipe.execute()
    finally:
        client.close()
    return orders


def settled_rss(pid: int, *, interval_s: float = 0.5, tolerance: float = 0.005, max_wait_s: float = 5.0) -> int:
    """The process's RSS once two readings `interval_s` apart differ by less than `tolerance` (or after
    `max_wait_s`): freed objects and gRPC's buffers take a moment to settle after a burst."""
    deadline = time.monotonic() + max_wait_s
    previous = rss_bytes(pid)
    while True:
        time.sleep(interval_s)
        current = rss_bytes(pid)
        if abs(current - previous) <= tolerance * previous or time.monotonic() > deadline:
            return current
        previous = current


def _warm_up(target: str, api_key: str, orders: Sequence[tuple[str, str]]) -> None:
    """Opens a stream on each order, reads its first message and closes it: first-call costs (imports, caches,
    gRPC's per-method state) are then paid before the memory baseline."""
    with EntitlementsClient(target, api_key=api_key, retry_policy=None) as client:
        for order_id, user_id in orders:
            with client.get_order_status(order_id, user_id) as stream:
                next(stream)


def _wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


def _start(
    server: str,
    orders: int,
    *,
    placement: Placement,
    workdir: Path,
    api_key: str,
    log_level: str,
    cluster: BenchCluster | None = None,
) -> tuple[Child, str, str | None, list[tuple[str, str]], list[tuple[str, str]]]:
    """Starts `server` ("service" or "bare") with `orders` orders to watch.

    Returns:
        The process, its target, its metrics URL (None for the bare server), the orders to open the measured
        streams on and the warm-up orders (stored in the service's Valkey; made up for the bare server, which
        answers any order).
    """
    if server == "bare":
        child, target = start_bare(placement, workdir)
        made_up = [(f"streams-order-{i}", f"streams-player-{i}") for i in range(orders)]
        return child, target, None, made_up, made_up[:WARM_UP_STREAMS]
    child, endpoints = start_service(
        placement,
        workdir,
        api_key,
        log_level=log_level,
        # The default cap (10,000) fits 10,000 streams exactly; the warm-up orders need a little more.
        extra_env={"ENTITLEMENTS_MAX_ORDER_TRACKERS": str(max(10_000, orders + WARM_UP_STREAMS))},
        name=f"service ({orders} orders)",
        cluster=cluster,
    )
    try:
        stored = seed_orders(endpoints, orders, "streams")
        warm = seed_orders(endpoints, WARM_UP_STREAMS, "warm")
    except BaseException:
        child.stop()
        raise
    return child, endpoints.target, endpoints.metrics_url, stored, warm


def measure_size(
    streams: int,
    *,
    server: str = "service",
    placement: Placement,
    workdir: Path,
    processes: int,
    channels: int,
    streams_per_order: int = 1,
    hold_s: float = HOLD_S,
    log_level: str = "info",
    say: Callable[[str], None] = print,
    cluster: BenchCluster | None = None,
) -> StreamsResult:
    """Opens `streams` streams on a fresh `server` process ("service" or "bare") and measures them (see the
    module docstring). With `streams_per_order` above 1, that many streams watch each order (they share its
    tracker)."""
    workdir.mkdir(parents=True, exist_ok=True)
    api_key = secrets.token_urlsafe(24)
    child: Child | None = None
    watchers: Watchers | None = None
    try:
        child, target, metrics_url, orders, warm = _start(
            server,
            -(-streams // streams_per_order),
            placement=placement,
            workdir=workdir,
            api_key=api_key,
            log_level=log_level,
            cluster=cluster,
        )
        watchers = Watchers(
            target=target,
            api_key=api_key,
            orders=[orders[index % len(orders)] for index in range(streams)],
            processes=processes,
            channels=channels,
            cores=placement.load,
            workdir=workdir,
            await_first=True,
        )
        _warm_up(target, api_key, warm)
        if metrics_url is not None:
            _wait_for(
                lambda: counters.gauge(metrics_url, "entitlements_order_watchers") == 0,
                10.0,
                "the warm-up streams to end",
            )
        rss_before = settled_rss(child.pid)
        cpu_before, cores_before = cpu_seconds(child.pid), core_times()
        open_at, answers = watchers.open()
        cpu_open = cpu_seconds(child.pid) - cpu_before
        load_busy = math.nan
        if placement.load is not None:
            load_busy = core_busy_between(cores_before, core_times()).get(placement.load[0], math.nan)
        firsts = sorted(t - open_at for answer in answers for t in answer["first_message_at"])
        errors: Counter[str] = Counter()
        for answer in answers:
            errors.update(answer["errors"])
        rss_after = settled_rss(child.pid)
        hold_start = cpu_seconds(child.pid)
        time.sleep(hold_s)
        hold_cpu = (cpu_seconds(child.pid) - hold_start) / hold_s
        result = StreamsResult(
            server=server,
            streams=streams,
            orders=len(orders),
            clients=f"{processes} processes x {channels} connections",
            open_s=round(firsts[-1], 3) if firsts else math.nan,
            first_message_p50_s=round(statistics.median(firsts), 3) if firsts else math.nan,
            errors=dict(errors),
            rss_before_mb=round(rss_before / 2**20, 1),
            rss_after_mb=round(rss_after / 2**20, 1),
            kb_per_stream=round((rss_after - rss_before) / 1024 / streams, 1),
            server_cpu_open_s=round(cpu_open, 2),
            load_core_busy_open=round(load_busy, 3),
            hold_cpu=round(hold_cpu, 4),
            hold_s=hold_s,
        )
        say(
            f"  {streams:,} streams [{server}]: open in {result.open_s:.2f} s (p50 first message "
            f"{result.first_message_p50_s:.2f} s), errors {result.error_count}, RSS {result.rss_before_mb:.0f} -> "
            f"{result.rss_after_mb:.0f} MiB ({result.kb_per_stream:.1f} KiB/stream), "
            f"{result.cpu_ms_per_open:.2f} ms CPU per stream opened, idle {result.hold_cpu * 100:.2f}% of a core"
        )
        return result
    finally:
        if watchers is not None:
            watchers.stop()
        if child is not None:
            child.stop()


def run_streams(
    *,
    workdir: Path,
    placement: Placement,
    sizes: Sequence[int] = DEFAULT_SIZES,
    servers: Sequence[str] = SERVERS,
    processes: int = 4,
    channels: int = 2,
    streams_per_order: int = 1,
    hold_s: float = HOLD_S,
    log_level: str = "info",
    say: Callable[[str], None] = print,
    cluster: BenchCluster | None = None,
) -> list[StreamsResult]:
    """Measures every size in `sizes` on each of `servers`, each time on a fresh process (the service on `cluster`
    when given); see the module docstring."""
    return [
        measure_size(
            size,
            server=server,
            placement=placement,
            workdir=workdir / f"{server}-{size}",
            processes=processes,
            channels=channels,
            streams_per_order=streams_per_order,
            hold_s=hold_s,
            log_level=log_level,
            say=say,
            cluster=cluster,
        )
        for size in sizes
        for server in servers
    ]


def streams_table(results: Sequence[StreamsResult]) -> str:
    """The stream results as a fixed-width text table, with the service's figures over the bare server's."""
    header = (
        "streams",
        "server",
        "open all s",
        "p50 first msg s",
        "errors",
        "RSS before/after MiB",
        "KiB/stream",
        "CPU ms/stream opened",
        "load core % (open)",
        "idle CPU % (hold)",
    )
    rows = [
        (
            f"{r.streams:,}",
            r.server,
            f"{r.open_s:.2f}",
            f"{r.first_message_p50_s:.2f}",
            str(r.error_count) if not r.errors else ",".join(f"{k}:{v}" for k, v in sorted(r.errors.items())),
            f"{r.rss_before_mb:.0f} / {r.rss_after_mb:.0f}",
            f"{r.kb_per_stream:.1f}",
            f"{r.cpu_ms_per_open:.2f}",
            "-" if math.isnan(r.load_core_busy_open) else f"{r.load_core_busy_open * 100:.0f}",
            f"{r.hold_cpu * 100:.2f}",
        )
        for r in results
    ]
    ratios = []
    by_key = {(r.streams, r.server): r for r in results}
    for (streams, server), service in by_key.items():
        bare = by_key.get((streams, "bare"))
        if server == "service" and bare is not None and bare.kb_per_stream > 0 and bare.open_s > 0:
            memory = service.kb_per_stream / bare.kb_per_stream
            cpu = service.cpu_ms_per_open / bare.cpu_ms_per_open
            ratios.append(
                f"  {streams:,} streams, service / bare: memory per stream {memory:.2f}, "
                f"time to open {service.open_s / bare.open_s:.2f}, CPU per stream opened {cpu:.2f}"
            )
    return simple_table(header, rows) + ("\n\n" + "\n".join(ratios) if ratios else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(str(n) for n in DEFAULT_SIZES), help="comma list of N")
    parser.add_argument("--processes", type=int, default=4, help="watcher processes (default 4)")
    parser.add_argument("--channels", type=int, default=2, help="connections per watcher process (default 2)")
    parser.add_argument("--hold-s", type=float, default=HOLD_S)
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma list among bare,service")
    parser.add_argument("--streams-per-order", type=int, default=1, help="streams sharing each order (default 1)")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    args = parser.parse_args(argv)
    placement = Placement.for_cores(args.server_core, args.load_core, None)
    with signals_interrupt(), tempfile.TemporaryDirectory(prefix="ent-bench-streams-") as tmp:
        results = run_streams(
            workdir=Path(tmp),
            placement=placement,
            sizes=[int(n) for n in args.sizes.split(",")],
            servers=[name for name in args.servers.split(",") if name in SERVERS],
            processes=args.processes,
            channels=args.channels,
            streams_per_order=args.streams_per_order,
            hold_s=args.hold_s,
        )
    print(streams_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
