"""The `processes` part of `python -m bench`: CheckEntitlement on one service process, and on a group of two
(`ENTITLEMENTS_PROCESSES=2`), measured as calls answered per CPU-second of the service's processes.

This machine's two cores cannot show two processes serving twice the calls of one: the load generator needs one
core, so both workers of the group share the server core. What a second process changes is measured instead: the
CPU each call costs. Two processes sharing one core pay for it (each switch between them cools the caches the other
had warmed), which a host with a core per worker does not; so the group is compared with a pair of independent
single services sharing the core the same way, each carrying half the load, as each worker does. If a call costs a
worker of the group as much CPU as it costs a process of the pair, the group adds nothing to what two processes
cost, and on a host with a core per worker it serves twice the calls of one. The part reports that projection,
2 x (the group's calls per CPU-second) / (the pair's), against the goal of 1.6 (a call may cost a worker no more
than 1/0.8 of what it costs a process of the pair), and beside it the group against one process alone on the core
(which includes the cost of sharing the core).

How it is measured:

- the three services run at once (one process; a second one, its pair; the group), each with its own embedded
  Valkey and data set, started on the server core (0) under taskset with every process they start (the group's
  parent and workers); their Valkeys are moved to the load core (1), as in the core part, so that the server
  core's CPU is the services' Python processes alone;
- h2load on the load core: `LOAD` (16 connections, 2 calls in flight on each, 32 in all as in the core part)
  against one process alone and against the group (16 connections, so that the kernel's SO_REUSEPORT hash spreads
  them over both workers); half of it against each process of the pair at once (two h2loads). The runs go in the
  order one, pair, group, group, pair, one, each a warm-up and half the measured time (halves merged, so a drift
  of the shared machine's speed shifts all alike);
- around each run (warm-up included, for every count alike): the calls each process answered OK, from its own
  `entitlements_rpc_requests_total{method="CheckEntitlement",code="OK"}` (the group's workers serve one endpoint
  each), and the CPU time of each of the services' processes (the group's parent too), from the per-thread
  schedstat of /proc (`bench.usage.cpu_seconds`; nanoseconds, not the 10 ms ticks of /proc/<pid>/stat). The CPU
  the processes spend with no load (per second, over `IDLE_S` before the runs) is reported beside: it is counted
  in the calls' CPU, against the group, which has a parent besides its two of everything that polls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import counters, dataset, h2load
from bench.cores import pin_process
from bench.processes import Child, descendants
from bench.report import Run
from bench.servers import Placement, start_service
from bench.usage import cpu_seconds

METHOD = "CheckEntitlement"
SERVICE_PATH = "/entitlements.v1.EntitlementService/"
LOAD = h2load.Load(16, 2)
#: Each process of the pair's load: half of `LOAD`, as each worker of the group carries.
HALF_LOAD = h2load.Load(LOAD.clients // 2, LOAD.streams)
#: The window over which each service's idle CPU is measured before the runs.
IDLE_S = 3.0
#: The goal: the group's calls per CPU-second at least this share of one process's (2 workers: 1.6x).
GOAL_EFFICIENCY = 0.8


@dataclasses.dataclass
class Measured:
    """One configuration's totals over its runs."""

    name: str
    processes: int
    calls: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    by_worker: list[int] = dataclasses.field(default_factory=list)
    failed: int = 0
    #: CPU seconds per second the processes spent with no load (consumers polling, health checks), measured first.
    idle_cpu_per_s: float = 0.0

    @property
    def calls_per_cpu_s(self) -> float:
        return self.calls / self.cpu_s if self.cpu_s else float("nan")

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpu_s / self.calls * 1e6 if self.calls else float("nan")

    @property
    def qps(self) -> float:
        return self.calls / self.wall_s if self.wall_s else float("nan")


@dataclasses.dataclass(frozen=True)
class ProcessesResult:
    """The part's figures: one process, two, and the ratio of their calls per CPU-second."""

    one: Measured
    pair: Measured
    two: Measured
    load: str

    @property
    def efficiency(self) -> float:
        """The group's calls per CPU-second over the pair's: what the group adds to two processes sharing a core."""
        return self.two.calls_per_cpu_s / self.pair.calls_per_cpu_s

    @property
    def projected(self) -> float:
        """Two processes' throughput over one's on a host with a core for each: 2 x `efficiency`."""
        return 2 * self.efficiency

    @property
    def efficiency_against_one(self) -> float:
        """The group's calls per CPU-second over one process's alone on the core (sharing the core included)."""
        return self.two.calls_per_cpu_s / self.one.calls_per_cpu_s

    def document(self) -> dict[str, object]:
        def figures(measured: Measured) -> dict[str, object]:
            return {
                **dataclasses.asdict(measured),
                "calls_per_cpu_s": round(measured.calls_per_cpu_s, 1),
                "cpu_us_per_call": round(measured.cpu_us_per_call, 2),
                "qps": round(measured.qps, 1),
            }

        return {
            "load": self.load,
            "one": figures(self.one),
            "pair": figures(self.pair),
            "two": figures(self.two),
            "efficiency": round(self.efficiency, 3),
            "projected_two_core_ratio": round(self.projected, 3),
            "efficiency_against_one": round(self.efficiency_against_one, 3),
            "goal": 2 * GOAL_EFFICIENCY,
        }


def processes_table(result: ProcessesResult) -> str:
    rows = [
        f"CheckEntitlement, {result.load} in all: calls per CPU-second of the service's processes",
        f"{'processes':<31}  {'calls':>9}  {'CPU s':>7}  {'µs CPU/call':>11}  {'calls/CPU-s':>11}  {'QPS':>8}  "
        f"{'idle CPU':>8}  split",
    ]
    for measured in (result.one, result.pair, result.two):
        rows.append(
            f"{measured.name:<31}  {measured.calls:>9,}  {measured.cpu_s:>7.2f}  {measured.cpu_us_per_call:>11.1f}"
            f"  {measured.calls_per_cpu_s:>11,.0f}  {measured.qps:>8,.0f}  {measured.idle_cpu_per_s:>8.1%}"
            f"  {measured.by_worker}"
        )
    rows.append(
        f"the group: {result.efficiency:.2f} of the pair's calls per CPU-second -> {result.projected:.2f}x one "
        f"process's throughput with a core each (goal >= {2 * GOAL_EFFICIENCY:.1f}x); "
        f"{result.efficiency_against_one:.2f} of one process alone on the core"
    )
    return "\n".join(rows)


def _consecutive_free_ports(count: int) -> int:
    """The first of `count` consecutive TCP ports free on 127.0.0.1 now (the group's metrics ports)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        try:
            for port in range(first + 1, first + count):
                with socket.socket() as other:
                    other.bind(("127.0.0.1", port))
        except OSError:
            continue
        if first + count <= 65535:
            return first
    raise RuntimeError(f"no {count} consecutive free ports")


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclasses.dataclass
class _Service:
    """A started service: the pids whose CPU counts, the metrics URL of each process answering calls."""

    child: Child
    target: str
    pids: list[int]
    metrics_urls: list[str]

    def cpu_s(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def answered(self) -> list[float]:
        return [counters.read(url).get((METHOD, "OK"), 0.0) for url in self.metrics_urls]


def _start(processes: int, placement: Placement, workdir: Path, api_key: str, log_level: str, name: str) -> _Service:
    metrics_port = _consecutive_free_ports(processes + 1)
    # Valkey is moved here, not by start_service: in a group the first descendant is a worker, not Valkey.
    child, endpoints = start_service(
        Placement(placement.server, placement.load, None),
        workdir,
        api_key,
        log_level=log_level,
        extra_env={"ENTITLEMENTS_PROCESSES": str(processes), "ENTITLEMENTS_METRICS_PORT": str(metrics_port)},
        name=name,
    )
    family = descendants(child.pid)
    valkeys = [pid for pid in family if "valkey-server" in _command(pid) or "redis-server" in _command(pid)]
    for pid in valkeys:
        if placement.valkey is not None:
            pin_process(pid, placement.valkey)
    if processes == 1:
        return _Service(child, endpoints.target, [child.pid], [f"http://127.0.0.1:{metrics_port}/metrics"])
    workers = [pid for pid in family if " worker " in _command(pid)]
    if len(workers) != processes:
        raise RuntimeError(f"the group runs {len(workers)} workers, not {processes}")
    urls = [f"http://127.0.0.1:{metrics_port + 1 + i}/metrics" for i in range(processes)]
    return _Service(child, endpoints.target, [child.pid, *workers], urls)


def run_processes(
    *,
    workdir: Path,
    placement: Placement,
    api_key: str,
    users: int,
    warmup_s: float,
    duration_s: float,
    log_level: str,
    children: list[Child],
    say: Callable[[str], None],
) -> ProcessesResult:
    """Measures CheckEntitlement on one service process, on a pair of them and on a group of two (see the module
    docstring)."""
    started_services: dict[str, _Service] = {}
    for name, processes, label in (
        ("one", 1, "service (1 process)"),
        ("pair", 1, "its pair (1 process)"),
        ("group", 2, "service (2 processes)"),
    ):
        home = workdir / f"processes-{name}"
        home.mkdir()
        service = _start(processes, placement, home, api_key, log_level, label)
        children.append(service.child)
        started_services[name] = service
        asyncio.run(dataset.populate(service.target, api_key, users))
        say(f"  {service.child.name}: {service.target}, pids {service.pids}, data for {users} players written")
    one, pair, group = started_services["one"], started_services["pair"], started_services["group"]
    # Each configuration: the services it measures, each with its load.
    configs: dict[str, list[tuple[_Service, h2load.Load]]] = {
        "one": [(one, LOAD)],
        "pair": [(one, HALF_LOAD), (pair, HALF_LOAD)],
        "two": [(group, LOAD)],
    }
    totals = {
        "one": Measured("1 process alone", 1, by_worker=[0]),
        "pair": Measured("2 single processes, a half each", 2, by_worker=[0, 0]),
        "two": Measured("a group of 2 (PROCESSES=2)", 2, by_worker=[0, 0]),
    }
    for name, config in configs.items():
        services = [service for service, _ in config]
        before, started = sum(s.cpu_s() for s in services), time.monotonic()
        time.sleep(IDLE_S)
        totals[name].idle_cpu_per_s = (sum(s.cpu_s() for s in services) - before) / (time.monotonic() - started)
    body = h2load.grpc_frame(dataset.check_request())

    def _load(scenario: str, service: _Service, load: h2load.Load) -> Run:
        return h2load.run(
            scenario=scenario,
            server="service",
            url=f"http://{service.target}{SERVICE_PATH}{METHOD}",
            body=body,
            headers=[("authorization", f"Bearer {api_key}")],
            load=load,
            warmup_s=warmup_s,
            duration_s=duration_s / 2,
            cores=placement.load,
            workdir=workdir,
        )

    for name in ("one", "pair", "two", "two", "pair", "one"):
        config, measured = configs[name], totals[name]
        services = [service for service, _ in config]
        calls_before = [service.answered() for service in services]
        cpu_before, started = sum(s.cpu_s() for s in services), time.monotonic()
        with ThreadPoolExecutor(len(config)) as pool:  # the pair's two loads at once
            scenarios = [f"processes-{name}-{n}" for n in range(len(config))]
            runs = list(pool.map(_load, scenarios, services, [load for _, load in config]))
        wall_s, cpu_s = time.monotonic() - started, sum(s.cpu_s() for s in services) - cpu_before
        answered = [
            int(after - before)
            for service, counts in zip(services, calls_before, strict=True)
            for after, before in zip(service.answered(), counts, strict=True)
        ]
        measured.calls += sum(answered)
        measured.cpu_s += cpu_s
        measured.wall_s += wall_s
        measured.failed += sum(run.failed for run in runs)
        measured.by_worker = [a + b for a, b in zip(measured.by_worker, answered, strict=True)]
        say(
            f"  {measured.name}: {sum(answered):,} calls OK (by process {answered}), {cpu_s:.2f} CPU s, "
            f"{cpu_s / max(sum(answered), 1) * 1e6:.1f} µs CPU per call"
        )
    return ProcessesResult(totals["one"], totals["pair"], totals["two"], LOAD.describe())
