"""`python -m bench`: every benchmark of the project in one run, on this machine, with one core placement.

Parts, in the order they run (`--only` picks some; all by default):

- `core`: the service's CheckEntitlement and Grant against a bare grpc.aio server under the same load
  (`bench.rpcs`): QPS, latency, CPU per call, their ratio, and how well its Valkey reads were pipelined; then the
  CPU of one per-call log line against structlog's stock processors (`bench.log_line`);
- `gateway`: signed, distinct order_paid webhooks into the real gateway against a bare aiohttp handler
  (`bench.gateway`): the ingest rate and its ratio; then valid webhooks at a steady rate, alone and while 32
  senders post 1 MiB badly signed bodies (`bench.attack`): their p50/p99 and the attackers' rate; then the same
  ingest load with each `GATEWAY_DURABILITY` (none, local, replicas) on a primary with a replica
  (`bench.durability`): webhooks/s and p99, and their ratios to none;
- `consumer`: webhook events applied per second by the service's consumer, against applying them directly
  (`bench.consumer`, a pinned child process);
- `streams`: N GetOrderStatus streams opened at once on one service process, for each N: the time to open them,
  errors, memory per stream and CPU while holding them (`bench.streams`);
- `latency`: from a webhook's 204 to the update on every stream watching its order, under a steady webhook rate
  (`bench.latency`);
- `cache`: the Python client's entitlement cache: `cache.check` per second in one process against a call doing
  nothing, and from a Grant's answer to the change applied in each of 8 caches watching the same players
  (`bench.cache`);
- `history`: ListEntitlements and ListSubscriptions of a player holding 20,000 expired items, and the latency a
  concurrent caller sees meanwhile (`bench.history`; `--history-root` measures another checkout's service);
- `processes`: CheckEntitlement on one service process and on a group of two (`ENTITLEMENTS_PROCESSES=2`), both
  on the server core: calls answered per CPU-second of the service's processes, and what that projects for two
  processes with a core each (`bench.workers`; the single Valkey only);
- `failover`: 2 service replicas and 2 gateways on a local Redis Cluster, a primary killed (SIGKILL) under webhook
  and grant load: acknowledged, applied, lost, doubled, and the seconds each kind of caller was refused
  (`bench.failover`; a fresh cluster per run, `--failover-runs` runs; not pinned: it measures correctness and
  unavailability, not throughput).

With `--cluster`, every part that stores runs against a local Redis Cluster (3 primaries with 1 replica each, its
nodes on the Valkey core; `bench.stores`) instead of the single Valkey it starts, against the same baselines:
`core`, the gateway's ingest run, `consumer`, `streams`, `latency` and `cache` (its propagation run). The gateway's
attack and durability runs and `history` (one player's keys, which live in one slot of a cluster) and `processes`
(CPU per call of the service alone) run on the single server only; `failover` runs on clusters of its own either
way.

Every part keeps the same discipline: the server under test alone on the server core (0), everything else
(load generators, clients, this process, Valkey) on the load core (1), every child process pinned with taskset,
in its own process group, and stopped whatever happens (normal end, error, SIGINT, SIGTERM); scratch data lives
in one temporary directory, removed at the end. The tables are printed at the end, and everything is written to
`bench/results/latest.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from bench import (
    attack,
    cache,
    consumer,
    durability,
    failover,
    gateway,
    history,
    host,
    latency,
    log_line,
    report,
    streams,
    workers,
)
from bench.processes import Child, signals_interrupt
from bench.report import Comparison
from bench.rpcs import RpcBenchmark, cpu_model, print_run
from bench.servers import ROOT, Placement, tail
from bench.stores import BenchCluster

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "latest.json"
DEFAULT_CLUSTER_OUTPUT = ROOT / "bench" / "results" / "latest-cluster.json"
PARTS = ("core", "gateway", "consumer", "streams", "latency", "cache", "history", "processes", "failover")
#: The parts `--cluster` leaves out (see the module docstring).
SINGLE_ONLY = ("history", "processes")


def _parts(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose among {','.join(PARTS)} (got {text!r})")
    return tuple(part for part in PARTS if part in chosen)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(n) for n in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma list of stream counts, not {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("stream counts must be positive")
    return sizes


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        type=_parts,
        default=None,
        help=f"comma list of the parts to run, among {','.join(PARTS)} (default: all)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="store on a local Redis Cluster (3 primaries, 1 replica each) instead of one Valkey; "
        f"leaves out {','.join(SINGLE_ONLY)}",
    )
    core = parser.add_argument_group("core (gRPC: the service against a bare grpc.aio server)")
    core.add_argument("--duration-s", type=float, default=10.0, help="measured window of each run (default 10)")
    core.add_argument(
        "--warmup-s", type=float, default=2.0, help="load before each measured window, gateway too (default 2)"
    )
    core.add_argument("--users", type=int, default=1000, help="players written before the runs (default 1000)")
    core.add_argument("--h2load-clients", type=int, default=4, help="h2load connections, -c (default 4)")
    core.add_argument("--h2load-streams", type=int, default=8, help="h2load streams per connection, -m (default 8)")
    core.add_argument("--processes", type=int, default=2, help="Python load worker processes (default 2)")
    core.add_argument("--concurrency", type=int, default=32, help="calls in flight per Python worker (default 32)")
    core.add_argument(
        "--no-h2load", action="store_true", help="use only the Python generator, as when h2load is not installed"
    )
    core.add_argument(
        "--profile",
        choices=("python", "native"),
        default=None,
        help="after the runs, sample the service with py-spy under the load of --profile-rpc (see bench.profiling)",
    )
    core.add_argument(
        "--profile-rpc",
        choices=("CheckEntitlement", "CheckEntitlements", "Grant"),
        default="CheckEntitlement",
        help="the RPC driven while --profile samples (default CheckEntitlement)",
    )
    hooks = parser.add_argument_group("gateway and consumer")
    hooks.add_argument(
        "--gateway-duration-s", type=float, default=10.0, help="measured time per server, in two halves (default 10)"
    )
    hooks.add_argument(
        "--attack-duration-s",
        type=float,
        default=5.0,
        help="each window of the gateway's attack run, alone and attacked (default 5)",
    )
    hooks.add_argument(
        "--durability-duration-s",
        type=float,
        default=5.0,
        help="measured time of each durability setting in the gateway's durability run (default 5)",
    )
    hooks.add_argument("--consumer-events", type=int, default=5000, help="events per measurement (default 5000)")
    hooks.add_argument(
        "--consumer-write-durability",
        choices=("auto", "local", "replicas", "none"),
        default="auto",
        help="what the consumer's writes wait for, as ENTITLEMENTS_WRITE_DURABILITY (default auto)",
    )
    order_status = parser.add_argument_group("streams and latency (GetOrderStatus)")
    order_status.add_argument(
        "--stream-sizes",
        type=_sizes,
        default=streams.DEFAULT_SIZES,
        help="streams opened at once (default 1000,5000,10000)",
    )
    order_status.add_argument("--stream-hold-s", type=float, default=streams.HOLD_S, help="idle hold (default 5)")
    order_status.add_argument("--latency-rate", type=float, default=200.0, help="webhooks per second (default 200)")
    order_status.add_argument("--latency-duration-s", type=float, default=10.0, help="webhook time (default 10)")
    order_status.add_argument("--streams-per-order", type=int, default=2, help="for the latency part (default 2)")
    cached = parser.add_argument_group("cache (the Python client's entitlement cache)")
    cached.add_argument("--cache-caches", type=int, default=8, help="caches watching the same players (default 8)")
    cached.add_argument("--cache-rate", type=float, default=200.0, help="grants per second (default 200)")
    cached.add_argument("--cache-duration-s", type=float, default=10.0, help="grant time (default 10)")
    long_history = parser.add_argument_group("history (a player with many expired items)")
    long_history.add_argument("--history-items", type=int, default=20_000, help="expired items (default 20000)")
    long_history.add_argument("--history-calls", type=int, default=20, help="calls per scenario (default 20)")
    long_history.add_argument(
        "--history-root",
        type=Path,
        default=None,
        help="measure the service of another checkout of the project (e.g. an older commit), with this virtualenv",
    )
    killed = parser.add_argument_group("failover (a Redis Cluster primary killed under load)")
    killed.add_argument("--failover-runs", type=int, default=3, help="runs, each on a fresh cluster (default 3)")
    killed.add_argument(
        "--failover-replicas",
        type=int,
        choices=(1, 2),
        default=2,
        help="replicas per primary (default 2; with 1, the killed node is started again 5 s after the failover, "
        "until which the promoted primary has no replica and its webhooks are answered 503)",
    )
    placement = parser.add_argument_group("placement and output")
    placement.add_argument("--server-core", type=int, default=0)
    placement.add_argument("--load-core", type=int, default=1)
    placement.add_argument("--valkey-core", type=int, default=None, help="Valkey's core (default: the load core)")
    placement.add_argument(
        "--service-log-level",
        default="info",
        help="the service's and gateway's log level; `info` (the default, as in production) writes one line per call",
    )
    placement.add_argument(
        "--output",
        type=Path,
        default=None,
        help="the JSON results file (default bench/results/latest.json, latest-cluster.json with --cluster)",
    )
    args = parser.parse_args(argv)
    if args.only is None:
        args.only = tuple(part for part in PARTS if not (args.cluster and part in SINGLE_ONLY))
    elif args.cluster and set(args.only) & set(SINGLE_ONLY):
        parser.error(f"{','.join(SINGLE_ONLY)} runs on the single server only (one player's keys live in one slot)")
    if args.output is None:
        args.output = DEFAULT_CLUSTER_OUTPUT if args.cluster else DEFAULT_OUTPUT
    return args


def _print(message: str) -> None:
    print(message, flush=True)


@dataclasses.dataclass
class Results:
    """What the parts measured so far."""

    comparisons: list[Comparison] = dataclasses.field(default_factory=list)
    setup: dict[str, Any] = dataclasses.field(default_factory=dict)
    consumer_result: consumer.ConsumerBenchResult | None = None
    stream_results: list[streams.StreamsResult] = dataclasses.field(default_factory=list)
    latency_result: latency.LatencyResult | None = None
    cache_result: cache.CacheResult | None = None
    history_result: history.HistoryResult | None = None
    attack_result: attack.AttackResult | None = None
    durability_result: durability.DurabilityResult | None = None
    failover_results: list[failover.FailoverResult] = dataclasses.field(default_factory=list)
    processes_result: workers.ProcessesResult | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        """The parts other than the comparisons, for the JSON file."""
        document: dict[str, Any] = dict(self.extra)
        if self.consumer_result is not None:
            ratio = round(self.consumer_result.ratio, 3)
            document["consumer"] = {**dataclasses.asdict(self.consumer_result), "ratio": ratio}
        if self.stream_results:
            document["streams"] = [dataclasses.asdict(result) for result in self.stream_results]
        if self.latency_result is not None:
            document["latency"] = dataclasses.asdict(self.latency_result)
        if self.cache_result is not None:
            document["cache"] = dataclasses.asdict(self.cache_result)
        if self.history_result is not None:
            document["history"] = dataclasses.asdict(self.history_result)
        if self.attack_result is not None:
            document["gateway_attack"] = dataclasses.asdict(self.attack_result)
        if self.durability_result is not None:
            document["gateway_durability"] = dataclasses.asdict(self.durability_result)
        if self.failover_results:
            document["failover"] = failover.document(self.failover_results)
        if self.processes_result is not None:
            document["processes"] = self.processes_result.document()
        return document


@contextlib.contextmanager
def _store(
    args: argparse.Namespace, placement: Placement, workdir: Path, appendfsync: str
) -> Iterator[BenchCluster | None]:
    """With `--cluster`, a local Redis Cluster for the part (its nodes on the Valkey core), stopped at its end;
    otherwise None (the part starts its own Valkey). `appendfsync`: the single server's in that part."""
    if not args.cluster:
        yield None
        return
    with BenchCluster(workdir, placement.valkey, appendfsync=appendfsync) as cluster:
        _print(f"  {cluster.describe()}, seeded at {cluster.url}")
        yield cluster


def _core(args: argparse.Namespace, placement: Placement, workdir: Path, results: Results) -> None:
    with _store(args, placement, workdir, "always") as cluster:
        _core_on(args, placement, workdir, results, cluster)


def _core_on(
    args: argparse.Namespace, placement: Placement, workdir: Path, results: Results, cluster: BenchCluster | None
) -> None:
    children: list[Child] = []
    try:
        benchmark = RpcBenchmark(args, placement, workdir, children, cluster)
        benchmark.prepare()
        benchmark.run_all()
        results.comparisons.extend(benchmark.comparisons)
        line = log_line.measure(cores=placement.load)
        _print(line.describe())
        results.extra["log_line"] = {**dataclasses.asdict(line), "speedup": round(line.speedup, 3)}
        if args.profile is not None and benchmark.use_h2load:
            results.extra["profile"] = benchmark.profile(args.profile, args.profile_rpc)
        elif args.profile is not None:
            _print("--profile needs h2load to drive the load; skipped")
        results.setup["core"] = benchmark.setup()
    except BaseException:
        for log in ("service.log", "bare.log"):
            _print(f"--- last lines of {log} ---\n{tail(workdir / log)}")
        raise
    finally:
        for child in reversed(children):
            code = child.stop()
            if code not in (0, -signal.SIGTERM):
                _print(f"{child.name} exited with code {code}")


def _gateway(args: argparse.Namespace, placement: Placement, workdir: Path, results: Results) -> None:
    with _store(args, placement, workdir, "everysec") as cluster:
        comparison = gateway.run_ingest(
            workdir=workdir,
            warmup_s=args.warmup_s,
            duration_s=args.gateway_duration_s,
            server_cores=placement.server,
            load_cores=placement.load,
            valkey_cores=placement.valkey,
            cluster=cluster,
        )
    for run in (comparison.bare, comparison.service):
        if run is not None:
            print_run(run.server, run)
    results.comparisons.append(comparison)
    if args.cluster:
        _print("  the attack and durability runs are the single server's only: left out with --cluster")
        return
    results.attack_result = attack.run_attack(
        workdir=workdir / "attack",
        placement=placement,
        duration_s=args.attack_duration_s,
        log_level=args.service_log_level,
    )
    _print(
        f"  under attack: valid p50/p99 {results.attack_result.attacked.p50_ms:.1f}/"
        f"{results.attack_result.attacked.p99_ms:.1f} ms "
        f"(alone {results.attack_result.quiet.p50_ms:.1f}/{results.attack_result.quiet.p99_ms:.1f} ms)"
    )
    results.durability_result = durability.run_durability(
        workdir=workdir / "durability",
        warmup_s=args.warmup_s,
        duration_s=args.durability_duration_s,
        processes=args.processes,
        concurrency=args.concurrency,
        server_cores=placement.server,
        load_cores=placement.load,
        log_level=args.service_log_level,
    )
    for setting in results.durability_result.runs:
        _print(f"  durability {setting.mode}: {setting.webhooks_per_s:,.0f} webhooks/s, p99 {setting.p99_ms:.1f} ms")


def _consumer(args: argparse.Namespace, placement: Placement, workdir: Path, results: Results) -> None:
    result = consumer.run_consumer(
        placement=placement,
        workdir=workdir,
        events=args.consumer_events,
        cluster=args.cluster,
        durability=args.consumer_write_durability,
    )
    _print(
        f"  {result.events:,} events (writes: {result.write_durability}): consumer {result.events_per_s:,.0f}/s, "
        f"direct {result.baseline_events_per_s:,.0f}/s, ratio {result.ratio:.2f}"
    )
    results.consumer_result = result


def _streams(args: argparse.Namespace, placement: Placement, workdir: Path, results: Results) -> None:
    with _store(args, placement, workdir, "always") as cluster:
        results.stream_results = streams.run_streams(
            workdir=workdir,
            placement=placement,
            sizes=args.stream_sizes,
            hold_s=args.stream_hold_s,
            log_level=args.service_log_level,
            say=_print,
            cluster=cluster,
        )


def _latency(args: argparse.Namespace, placement: Placement, workdir: Path, results: Results) -> None:
    with _store(args, placement, workdir, "always") as cluster:
        results.latency_result = latency.run_latency(
            workdir=workdir,
            placement=placement,
            rate_per_s=args.latency_rate,
            duration_s=args.latency_duration_s,
            streams_per_order=args.streams_per_order,
            log_level=args.service_log_level,
            say=_print,
            cluster=cluster,
        )


def _cache(args: argparse.Namespace, placement: Placement, workdir: Path, results: Results) -> None:
    with _store(args, placement, workdir, "always") as cluster:
        results.cache_result = cache.run_cache(
            workdir=workdir,
            placement=placement,
            caches=args.cache_caches,
            rate_per_s=args.cache_rate,
            duration_s=args.cache_duration_s,
            log_level=args.service_log_level,
            say=_print,
            cluster=cluster,
        )


def _history(args: argparse.Namespace, placement: Placement, workdir: Path, results: Results) -> None:
    results.history_result = history.run_history(
        workdir=workdir,
        placement=placement,
        items=args.history_items,
        calls=args.history_calls,
        server_root=args.history_root,
        log_level=args.service_log_level,
        say=_print,
    )


def _processes(args: argparse.Namespace, placement: Placement, workdir: Path, results: Results) -> None:
    children: list[Child] = []
    try:
        results.processes_result = workers.run_processes(
            workdir=workdir,
            placement=placement,
            api_key=secrets.token_urlsafe(24),
            users=args.users,
            warmup_s=args.warmup_s,
            duration_s=args.duration_s,
            log_level=args.service_log_level,
            children=children,
            say=_print,
        )
    except BaseException:
        for name in ("one", "pair", "group"):
            _print(f"--- last lines of the service's log ({name}) ---")
            _print(tail(workdir / f"processes-{name}" / "service.log"))
        raise
    finally:
        for child in reversed(children):
            code = child.stop()
            if code not in (0, -signal.SIGTERM):
                _print(f"{child.name} exited with code {code}")


def _failover(args: argparse.Namespace, placement: Placement, workdir: Path, results: Results) -> None:
    pinned = os.sched_getaffinity(0)
    # The cluster's nodes and the processes inherit this process's cores: every core, as on an unpinned host.
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    try:
        results.failover_results = failover.run_failover(
            workdir=workdir, runs=args.failover_runs, replicas=args.failover_replicas, say=_print
        )
    finally:
        os.sched_setaffinity(0, pinned)


RUNNERS: dict[str, tuple[str, Callable[[argparse.Namespace, Placement, Path, Results], None]]] = {
    "core": ("gRPC, service against bare (in the order bare, service, service, bare; halves merged)", _core),
    "gateway": ("webhook ingest, gateway against bare aiohttp (bare, gateway, gateway, bare)", _gateway),
    "consumer": ("webhook events applied by the consumer", _consumer),
    "streams": ("GetOrderStatus streams opened at once, one service process", _streams),
    "latency": ("webhook 204 -> update on the streams", _latency),
    "cache": ("the Python client's cache: checks/s in one process; grant -> every watching cache", _cache),
    "history": ("listings of a player with a long history of expired items", _history),
    "processes": ("CheckEntitlement per CPU-second, one service process against a group of two", _processes),
    "failover": ("a Redis Cluster primary killed under load, 2 services and 2 gateways on the cluster", _failover),
}


def _setup(args: argparse.Namespace, placement: Placement) -> dict[str, Any]:
    """What every figure depends on, for the JSON file."""
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": platform.machine(),
        "processor": cpu_model(),
        "cores_online": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "placement": placement.describe(),
        "parts": list(args.only),
        "store": "local Redis Cluster, 3 primaries x 1 replica" if args.cluster else "one Valkey",
        "log_level": args.service_log_level,
    }


def _print_tables(results: Results) -> None:
    if results.comparisons:
        _print("\n" + report.table(results.comparisons))
        # Only for reads: INFO also counts the commands a Lua script runs, so a Grant's figure says nothing
        # about pipelining (the JSON file keeps every run's counts).
        pipelined = [
            f"  {c.scenario}: {c.service.commands_per_read:.2f}"
            for c in results.comparisons
            if c.service.store_io and c.scenario.startswith("CheckEntitlement")
        ]
        if pipelined:
            _print("\nValkey commands per client-socket read, service's CheckEntitlement runs (INFO stats):")
            _print("\n".join(pipelined))
    if results.attack_result is not None:
        _print("\n" + attack.attack_table(results.attack_result))
    if results.durability_result is not None:
        _print("\n" + results.durability_result.table())
    if results.consumer_result is not None:
        _print("\n" + consumer.consumer_table(results.consumer_result))
    if results.stream_results:
        _print("\n" + streams.streams_table(results.stream_results))
    if results.latency_result is not None:
        _print("\n" + latency.latency_table(results.latency_result))
    if results.cache_result is not None:
        _print("\n" + cache.cache_table(results.cache_result))
    if results.history_result is not None:
        _print("\n" + history.history_table(results.history_result))
    if results.processes_result is not None:
        _print("\n" + workers.processes_table(results.processes_result))
    if results.failover_results:
        _print("\n" + failover.failover_table(results.failover_results))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    placement = Placement.for_cores(args.server_core, args.load_core, args.valkey_core)
    if placement.load is not None:
        os.sched_setaffinity(0, placement.load)  # this process only orchestrates, reads counters, seeds data
    else:
        _print("fewer than two cores: nothing is pinned, and load and server share the CPU")
    started = time.monotonic()
    results = Results(setup=_setup(args, placement))
    store = "a local Redis Cluster" if args.cluster else "one Valkey"
    _print(f"cores: {placement.describe()}; parts: {','.join(args.only)}; store: {store}")
    # How fast the host runs (`bench.host`): absolute figures of different days are comparable only with this.
    loop_at_start, cpu_at_start = host.loop_ns(placement.server), host.CpuTimes.read()
    _print(host.describe(loop_at_start))
    with signals_interrupt(), tempfile.TemporaryDirectory(prefix="ent-bench-") as tmp:
        try:
            for part in args.only:
                title, runner = RUNNERS[part]
                part_started = time.monotonic()
                _print(f"\n[{part}] {title}")
                workdir = Path(tmp) / part
                workdir.mkdir()
                runner(args, placement, workdir, results)
                _print(f"[{part}] took {time.monotonic() - part_started:.0f} s")
        except KeyboardInterrupt:
            _print("interrupted: every child process is stopped; nothing written")
            return 130
    results.setup["load_average_at_end"] = os.getloadavg()
    loop_at_end = host.loop_ns(placement.server)
    steal = host.CpuTimes.read().steal_share_since(cpu_at_start)
    results.setup["host_loop_ns"] = {"start": loop_at_start, "end": loop_at_end}
    results.setup["steal_share"] = steal
    results.setup["seconds"] = round(time.monotonic() - started)
    _print_tables(results)
    _print("\n" + host.describe(loop_at_start, loop_at_end, steal))
    report.write_json(args.output, results.setup, results.comparisons, results.document())
    _print(f"\nresults written to {args.output}; the whole benchmark took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
