"""The gRPC part of `python -m bench`: the service against a bare grpc.aio server, same load, same core.

What runs where (on a machine with at least two cores; defaults shown):

- core 0: the server under test, alone. The service (`python -m server`, embedded Valkey, one API key, JSON
  log lines to a file) and the bare server (`bench.bare`) both live there for the whole part, and are loaded
  one at a time; the idle one costs nothing measurable.
- core 1: the load generators (h2load, the Python workers), the orchestrating process, and the service's
  embedded Valkey. Valkey is a child of the service and would inherit core 0; it is moved to core 1 so that
  core 0 measures the Python process alone, as a service talking to a Redis elsewhere would run. One extra
  row measures CheckEntitlement with Valkey moved back to core 0 (an all-in-one deployment on one core).

Sequence: start both servers, write the data set through the client, check sample calls on both, then for
each scenario load the two servers in the order bare, service, service, bare, each time with a fixed warm-up
and half of the measured window, and merge the halves (so a drift of the shared machine's speed shifts both
alike). Around each run, read the service's RPC counters, its Valkey's command and socket-read counters
(INFO stats: how many commands each read of a client socket carried, i.e. how well reads are pipelined), and
how busy both cores were.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import platform
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import counters, dataset, h2load, loadgen, profiling, report
from bench.cores import BusyWindow, cpu_list, pin_process
from bench.processes import Child
from bench.report import Comparison, Run
from bench.servers import ROOT, Placement, start_bare, start_service
from bench.stores import BenchCluster

SERVICE_PATH = "/entitlements.v1.EntitlementService/"
SERVERS = ("bare", "service")
ABBA = ("bare", "service", "service", "bare")


def _print(message: str) -> None:
    print(message, flush=True)


def print_run(server: str, run: Run) -> None:
    """One line per measured run, as it completes."""
    answered = "" if run.server_codes is None else f", answered {dict(run.server_codes)}"
    pipelined = "" if math.isnan(run.commands_per_read) else f", Valkey {run.commands_per_read:.2f} commands/read"
    _print(
        f"  {run.scenario} [{server}]: {run.qps:,.0f} QPS, p50 {run.latency.p50_ms:.2f} ms, "
        f"p99 {run.latency.p99_ms:.2f} ms, busy % {report.busy_text(run)}{answered}{pipelined}"
    )


class RpcBenchmark:
    """The gRPC part: both servers started, the data written; runs scenarios and collects comparisons.

    Args:
        args: the command line (durations, loads, log level).
        placement: the cores.
        workdir: an empty scratch directory.
        children: receives every process started, for the caller to stop.
        cluster: a started Redis Cluster for the service (`--cluster`); None for its embedded Valkey.
    """

    def __init__(
        self,
        args: argparse.Namespace,
        placement: Placement,
        workdir: Path,
        children: list[Child],
        cluster: BenchCluster | None = None,
    ) -> None:
        self.args = args
        self.cluster = cluster
        self.placement = placement
        self.workdir = workdir
        self.api_key = secrets.token_urlsafe(24)
        self.auth = [("authorization", f"Bearer {self.api_key}")]
        self.load = h2load.Load(args.h2load_clients, args.h2load_streams)
        self.comparisons: list[Comparison] = []
        self.use_h2load = not args.no_h2load and h2load.executable() is not None
        self._stamp = time.strftime("%Y%m%dT%H%M%S")
        bare, bare_target = start_bare(placement, workdir)
        children.append(bare)
        self.service, self.endpoints = start_service(
            placement, workdir, self.api_key, log_level=args.service_log_level, cluster=cluster
        )
        children.append(self.service)
        self.targets = {"bare": bare_target, "service": self.endpoints.target}
        self.pids = {"bare": bare.pid, "service": self.service.pid}
        _print(
            f"bare server {bare_target} (pid {bare.pid}), service {self.endpoints.target} (pid {self.service.pid}), "
            + (
                f"its Valkey pid {self.endpoints.valkey_pid}"
                if cluster is None
                else f"on a Redis Cluster seeded at {cluster.url}"
            )
            + f"; cores {placement.describe()}"
        )

    def prepare(self) -> None:
        """Writes the data set through the client, then checks sample calls on both servers."""
        started = time.monotonic()
        written = asyncio.run(dataset.populate(self.endpoints.target, self.api_key, self.args.users))
        _print(f"wrote {written} grants for {self.args.users} players in {time.monotonic() - started:.1f} s")
        asyncio.run(dataset.sample_calls(self.endpoints.target, self.api_key, stateful=True))
        asyncio.run(dataset.sample_calls(self.targets["bare"], self.api_key, stateful=False))
        _print("sample calls (CheckEntitlement, replayed Grant) answered OK on both servers")

    def _store_io(self) -> dict[str, int]:
        """The service's Valkey's command and client-socket-read counters so far (INFO stats)."""
        return self.endpoints.store_io()

    def _measured(self, server: str, method: str, window: tuple[float, float], measure: Callable[[], Run]) -> Run:
        """Runs `measure`, adding the cores' busy time over `window` and, for the service, its RPC counts and
        its Valkey's commands and socket reads over the run."""
        busy = BusyWindow(*window, pid=self.pids[server])
        before = counters.read(self.endpoints.metrics_url) if server == "service" else None
        io_before = self._store_io() if server == "service" else None
        run = measure()
        by_core = busy.result()
        codes = None
        store_io = None
        if before is not None:
            codes = counters.increase(before, counters.read(self.endpoints.metrics_url), method)
        if io_before is not None:
            store_io = {name: value - io_before[name] for name, value in self._store_io().items()}
        cores_busy = None
        if self.placement.server is not None and self.placement.load is not None:
            cores_busy = {
                "server_process": busy.process_busy if busy.process_busy is not None else float("nan"),
                "server_core": by_core.get(self.placement.server[0], float("nan")),
                "load_core": by_core.get(self.placement.load[0], float("nan")),
            }
        return dataclasses.replace(run, server_codes=codes, cores_busy=cores_busy, store_io=store_io)

    def h2load_run(
        self, scenario: str, server: str, method: str, body: bytes, load: h2load.Load, duration_s: float
    ) -> Run:
        """One h2load run posting `body` to `method` of `server`."""
        # The window sits inside the measured part of the run, clear of its start and end.
        begin = time.time() + self.args.warmup_s + 0.2
        return self._measured(
            server,
            method,
            (begin, begin + duration_s - 0.4),
            lambda: h2load.run(
                scenario=scenario,
                server=server,
                url=f"http://{self.targets[server]}{SERVICE_PATH}{method}",
                body=body,
                headers=self.auth,
                load=load,
                warmup_s=self.args.warmup_s,
                duration_s=duration_s,
                cores=self.placement.load,
                workdir=self.workdir,
            ),
        )

    def python_run(self, scenario: str, server: str, method: str, duration_s: float) -> Run:
        """One run of the multi-process Python generator calling `method` of `server`."""
        begin = time.time() + loadgen.START_MARGIN_S + self.args.warmup_s + 0.2
        return self._measured(
            server,
            method,
            (begin, begin + duration_s - 0.4),
            lambda: loadgen.run(
                scenario=scenario,
                server=server,
                target=self.targets[server],
                method=method,
                processes=self.args.processes,
                concurrency=self.args.concurrency,
                users=self.args.users,
                warmup_s=self.args.warmup_s,
                duration_s=duration_s,
                cores=self.placement.load,
                api_key=self.api_key,
                run_id=f"{self._stamp}-{server}",
                cwd=ROOT,
            ),
        )

    def compare(self, scenario: str, run: Callable[[str, float], Run], duration_s: float, note: str = "") -> None:
        """Measures both servers under the same load and records the comparison.

        The runs go bare, service, service, bare, each for half of `duration_s`, and the halves are merged: a
        machine whose speed drifts during the minute (a shared host does) then shifts both servers alike
        instead of favouring whichever ran first.
        """
        halves: dict[str, list[Run]] = {server: [] for server in SERVERS}
        for server in ABBA:
            halves[server].append(run(server, duration_s / 2))
        runs = {server: report.merge(parts) for server, parts in halves.items()}
        for server in SERVERS:
            print_run(server, runs[server])
        self.comparisons.append(Comparison(scenario, runs["service"], runs["bare"], note))

    def run_all(self) -> None:
        """Every scenario, in order."""
        args, load = self.args, self.load
        check_body = h2load.grpc_frame(dataset.check_request())
        python_load = f"python {args.processes}x{args.concurrency}"
        _print("runs (in the order bare, service, service, bare; halves merged):")
        if self.use_h2load:
            scenario = f"CheckEntitlement, {load.describe()}"
            self.compare(
                scenario,
                lambda server, duration_s: self.h2load_run(
                    scenario, server, "CheckEntitlement", check_body, load, duration_s
                ),
                args.duration_s,
            )
            one = h2load.Load(1, 1)
            scenario_one = f"CheckEntitlement, {one.describe()}"
            self.compare(
                scenario_one,
                lambda server, duration_s: self.h2load_run(
                    scenario_one, server, "CheckEntitlement", check_body, one, duration_s
                ),
                max(2.0, args.duration_s / 2),
                note="one call at a time: latency without queueing",
            )
            self._batch_checks()
        grant = f"Grant, {python_load}"
        self.compare(
            grant,
            lambda server, duration_s: self.python_run(grant, server, "Grant", duration_s),
            args.duration_s,
            note="a new idempotency key per call: every call applies a grant",
        )
        check = f"CheckEntitlement, {python_load}"
        self.compare(
            check,
            lambda server, duration_s: self.python_run(check, server, "CheckEntitlement", duration_s),
            args.duration_s,
            note="the same generator as Grant's, for comparing the two RPCs"
            + ("" if self.use_h2load else "; h2load not used"),
        )
        if not self.use_h2load:
            return
        replay_body = h2load.grpc_frame(dataset.replay_request())
        replay = f"Grant replay, {load.describe()}"
        self.compare(
            replay,
            lambda server, duration_s: self.h2load_run(replay, server, "Grant", replay_body, load, duration_s),
            args.duration_s,
            note="one idempotency key for all calls: every call is an idempotent replay, nothing written",
        )
        valkey_pid, server_core, valkey_core = self.endpoints.valkey_pid, self.placement.server, self.placement.valkey
        if valkey_pid is not None and server_core and valkey_core and server_core != valkey_core:
            self._colocated(self.comparisons[0], valkey_pid, check_body, server_core, valkey_core)

    def _batch_checks(self) -> None:
        """CheckEntitlements of `dataset.BATCH_PAIRS` pairs (players), against the bare server's fixed answer of as
        many results; prints checks per second and the service's CPU per check."""
        pairs = dataset.BATCH_PAIRS
        body = h2load.grpc_frame(dataset.batch_check_request(pairs))
        scenario = f"CheckEntitlements of {pairs} pairs, {self.load.describe()}"
        self.compare(
            scenario,
            lambda server, duration_s: self.h2load_run(
                scenario, server, "CheckEntitlements", body, self.load, duration_s
            ),
            self.args.duration_s,
            note=f"QPS in calls: checks/s = {pairs} x QPS; {pairs} players, one held item each",
        )
        comparison = self.comparisons[-1]
        per_check = comparison.service.cpu_us_per_call / pairs
        bare = math.nan if comparison.bare is None else comparison.bare.cpu_us_per_call / pairs
        # Per second of the server core's CPU: what one core gives the service when nothing else shares it (on a
        # shared machine the measured rate is lower by the share others took).
        _print(
            f"  CheckEntitlements: {comparison.service.qps * pairs:,.0f} checks/s measured; "
            f"{1e6 / per_check:,.0f} checks per second of server CPU ({per_check:.1f} µs each; "
            f"the bare server's fixed answer {bare:.1f} µs per result)"
        )

    def _colocated(
        self,
        main_check: Comparison,
        valkey_pid: int,
        body: bytes,
        server_core: tuple[int, ...],
        valkey_core: tuple[int, ...],
    ) -> None:
        """CheckEntitlement again with Valkey moved onto the server core, against the first run's bare figures."""
        scenario = f"CheckEntitlement, {self.load.describe()}, Valkey on core {cpu_list(server_core)}"
        pin_process(valkey_pid, server_core)
        try:
            run = self.h2load_run(scenario, "service", "CheckEntitlement", body, self.load, self.args.duration_s)
        finally:
            pin_process(valkey_pid, valkey_core)
        print_run("service", run)
        note = "the service and its Valkey share the server core; bare figures from the first row"
        self.comparisons.append(Comparison(scenario, run, main_check.bare, note))

    def profile(self, mode: str, method: str = "CheckEntitlement") -> dict[str, Any]:
        """Samples the service with py-spy during one more run of `method` (CheckEntitlement or CheckEntitlements
        by h2load, Grant by the Python generator: a new idempotency key per call); returns and prints the summary,
        with the service's CPU per call over the run, so that each share reads as µs per call."""
        raw = self.workdir / "profile.txt"
        sampler = profiling.start(
            self.service.pid,
            duration_s=self.args.duration_s,
            native=mode == "native",
            cores=self.placement.load,
            output=raw,
        )
        try:
            busy = BusyWindow(time.time() + 1.2, time.time() + self.args.duration_s, pid=self.service.pid)
            if method == "Grant":
                run = loadgen.run(
                    scenario="profile",
                    server="service",
                    target=self.endpoints.target,
                    method=method,
                    processes=self.args.processes,
                    concurrency=self.args.concurrency,
                    users=self.args.users,
                    warmup_s=1.0,
                    duration_s=self.args.duration_s - loadgen.START_MARGIN_S,
                    cores=self.placement.load,
                    api_key=self.api_key,
                    run_id=f"{self._stamp}-profile",
                    cwd=ROOT,
                )
            else:
                request = (
                    dataset.batch_check_request(dataset.BATCH_PAIRS)
                    if method == "CheckEntitlements"
                    else dataset.check_request()
                )
                run = h2load.run(
                    scenario="profile",
                    server="service",
                    url=f"http://{self.endpoints.target}{SERVICE_PATH}{method}",
                    body=h2load.grpc_frame(request),
                    headers=self.auth,
                    load=self.load,
                    warmup_s=1.0,
                    duration_s=self.args.duration_s,
                    cores=self.placement.load,
                    workdir=self.workdir,
                )
            busy.result()
            sampler.process.communicate(timeout=30)
        finally:
            sampler.stop(grace_s=2)
        summary = profiling.summarize(raw)
        summary["mode"] = mode
        summary["method"] = method
        summary["qps_while_sampling"] = round(run.qps)
        if busy.process_busy is not None and run.qps > 0:
            summary["cpu_us_per_call"] = round(busy.process_busy / run.qps * 1e6, 1)
        _print(f"\nprofile ({mode}) of the service under {method} load, {run.qps:,.0f} QPS while sampling:")
        _print(profiling.render(summary))
        return summary

    def setup(self) -> dict[str, Any]:
        """What this part's figures depend on, for the JSON file."""
        args = self.args
        return {
            "h2load": h2load_version() if self.use_h2load else "not used",
            "warmup_s": args.warmup_s,
            "duration_s": args.duration_s,
            "users": args.users,
            "h2load_load": self.load.describe(),
            "python_load": f"{args.processes} processes x {args.concurrency} calls in flight",
            "service": "python -m server, "
            + ("embedded Valkey (appendfsync always)" if self.cluster is None else self.cluster.describe())
            + f", 1 API key, JSON logs to a file at level {args.service_log_level}",
        }


def h2load_version() -> str:
    """What `h2load --version` prints ("missing" when it is not installed)."""
    binary = h2load.executable()
    if binary is None:
        return "missing"
    found = subprocess.run(  # noqa: S603  # the h2load binary found on PATH and one fixed flag, no shell
        [binary, "--version"], capture_output=True, text=True, check=False
    )
    return found.stdout.strip()


def cpu_model() -> str:
    """The processor's model name, from /proc/cpuinfo."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"
