"""The `processes` part of `python -m bench`: CheckEntitlement on one service process, and on a group of two
(`ENTITLEMENTS_PROCESSES=2`), measured as calls answered per CPU-second of the service's processes.

This machine's two cores cannot show two processes serving twice the calls of one: the load generator needs one
core, so both workers of the group share the server core. What a second process changes is measured instead: the
CPU each call costs. If a call costs a worker of a group as much CPU as it costs a single process, then on a host
with a core per worker the group serves N times the calls; the part reports that projection, 2 x (calls per
CPU-second of the group) / (calls per CPU-second of one process), against the goal of 1.6 (a call may cost a
worker no more than 1/0.8 of what it costs one process).

How it is measured:

- both services run at once, each with its own embedded Valkey and data set, started on the server core (0) under
  taskset with every process they start (the group's parent and workers); their Valkeys are moved to the load core
  (1), as in the core part, so that the server core's CPU is the service's Python processes alone;
- the same h2load load (`LOAD`: 16 connections, so that the kernel's SO_REUSEPORT hash spreads them over both
  workers; 2 calls in flight on each, 32 in all as in the core part) on the load core, against each service in
  the order one, two, two, one, each run a warm-up and half the measured time (halves merged, so a drift of the
  shared machine's speed shifts both alike);
- around each run (warm-up included, for both counts alike): the calls each process answered OK, from its own
  `entitlements_rpc_requests_total{method="CheckEntitlement",code="OK"}` (the group's workers serve one endpoint
  each), and the CPU time of each of the service's processes (the group's parent too), from the per-thread
  schedstat of /proc (`bench.usage.cpu_seconds`; nanoseconds, not the 10 ms ticks of /proc/<pid>/stat). The CPU
  the processes spend with no load (per second, over `IDLE_S` before the runs) is reported beside: it is counted
  in the calls' CPU, against the group, which has two of everything that polls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import counters, dataset, h2load
from bench.cores import pin_process
from bench.processes import Child, descendants
from bench.servers import Placement, start_service
from bench.usage import cpu_seconds

METHOD = "CheckEntitlement"
SERVICE_PATH = "/entitlements.v1.EntitlementService/"
LOAD = h2load.Load(16, 2)
#: The window over which each service's idle CPU is measured before the runs.
IDLE_S = 3.0
#: The goal: the group's calls per CPU-second at least this share of one process's (2 workers: 1.6x).
GOAL_EFFICIENCY = 0.8


@dataclasses.dataclass
class Measured:
    """One configuration's totals over its runs."""

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
    two: Measured
    load: str

    @property
    def efficiency(self) -> float:
        """The group's calls per CPU-second over one process's."""
        return self.two.calls_per_cpu_s / self.one.calls_per_cpu_s

    @property
    def projected(self) -> float:
        """Two processes' throughput over one's on a host with a core for each: 2 x `efficiency`."""
        return 2 * self.efficiency

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
            "two": figures(self.two),
            "efficiency": round(self.efficiency, 3),
            "projected_two_core_ratio": round(self.projected, 3),
            "goal": 2 * GOAL_EFFICIENCY,
        }


def processes_table(result: ProcessesResult) -> str:
    rows = [
        f"CheckEntitlement, {result.load}: calls per CPU-second of the service's processes",
        f"{'processes':>9}  {'calls':>9}  {'CPU s':>7}  {'µs CPU/call':>11}  {'calls/CPU-s':>11}  {'QPS':>8}  "
        f"{'idle CPU':>8}  split",
    ]
    for measured in (result.one, result.two):
        rows.append(
            f"{measured.processes:>9}  {measured.calls:>9,}  {measured.cpu_s:>7.2f}  {measured.cpu_us_per_call:>11.1f}"
            f"  {measured.calls_per_cpu_s:>11,.0f}  {measured.qps:>8,.0f}  {measured.idle_cpu_per_s:>8.1%}"
            f"  {measured.by_worker}"
        )
    rows.append(
        f"two processes: {result.efficiency:.2f} of one's calls per CPU-second -> {result.projected:.2f}x one's "
        f"throughput with a core each (goal >= {2 * GOAL_EFFICIENCY:.1f}x)"
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


def _start(processes: int, placement: Placement, workdir: Path, api_key: str, log_level: str) -> _Service:
    metrics_port = _consecutive_free_ports(processes + 1)
    # Valkey is moved here, not by start_service: in a group the first descendant is a worker, not Valkey.
    child, endpoints = start_service(
        Placement(placement.server, placement.load, None),
        workdir,
        api_key,
        log_level=log_level,
        extra_env={"ENTITLEMENTS_PROCESSES": str(processes), "ENTITLEMENTS_METRICS_PORT": str(metrics_port)},
        name=f"service ({processes} process{'es' if processes > 1 else ''})",
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
    """Measures CheckEntitlement on one service process and on a group of two (see the module docstring)."""
    services: dict[int, _Service] = {}
    for processes in (1, 2):
        home = workdir / f"processes-{processes}"
        home.mkdir()
        service = _start(processes, placement, home, api_key, log_level)
        children.append(service.child)
        services[processes] = service
        asyncio.run(dataset.populate(service.target, api_key, users))
        say(f"  {service.child.name}: {service.target}, pids {service.pids}, data for {users} players written")
    body = h2load.grpc_frame(dataset.check_request())
    totals = {n: Measured(n, by_worker=[0] * n) for n in (1, 2)}
    for processes, service in services.items():
        before, started = service.cpu_s(), time.monotonic()
        time.sleep(IDLE_S)
        totals[processes].idle_cpu_per_s = (service.cpu_s() - before) / (time.monotonic() - started)
    order: Sequence[int] = (1, 2, 2, 1)
    for processes in order:
        service, measured = services[processes], totals[processes]
        calls_before, cpu_before, started = service.answered(), service.cpu_s(), time.monotonic()
        run = h2load.run(
            scenario=f"processes-{processes}",
            server="service",
            url=f"http://{service.target}{SERVICE_PATH}{METHOD}",
            body=body,
            headers=[("authorization", f"Bearer {api_key}")],
            load=LOAD,
            warmup_s=warmup_s,
            duration_s=duration_s / 2,
            cores=placement.load,
            workdir=workdir,
        )
        wall_s, cpu_s = time.monotonic() - started, service.cpu_s() - cpu_before
        answered = [int(after - before) for after, before in zip(service.answered(), calls_before, strict=True)]
        measured.calls += sum(answered)
        measured.cpu_s += cpu_s
        measured.wall_s += wall_s
        measured.failed += run.failed
        measured.by_worker = [a + b for a, b in zip(measured.by_worker, answered, strict=True)]
        say(
            f"  {processes} process{'es' if processes > 1 else ''}: {sum(answered):,} calls OK (by process "
            f"{answered}), {cpu_s:.2f} CPU s, {cpu_s / max(sum(answered), 1) * 1e6:.1f} µs CPU per call"
        )
    return ProcessesResult(totals[1], totals[2], LOAD.describe())
