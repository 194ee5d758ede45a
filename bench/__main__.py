"""`python -m bench`: the service against a bare grpc.aio server, same load, same core, one run.

What runs where (on a machine with at least two cores; defaults shown):

- core 0: the server under test, alone. The service (`python -m server`, embedded Valkey, one API key, JSON
  log lines to a file) and the bare server (`bench.bare`) both live there for the whole run, and are loaded
  one at a time; the idle one costs nothing measurable.
- core 1: the load generators (h2load, the Python workers), this orchestrating process, and the service's
  embedded Valkey. Valkey is a child of the service and would inherit core 0; it is moved to core 1 so that
  core 0 measures the Python process alone, as a service talking to a Redis elsewhere would run. One extra
  row measures CheckEntitlement with Valkey moved back to core 0 (an all-in-one deployment on one core).

Sequence: start both servers, write the data set through the client, check sample calls on both, then for
each scenario load the two servers in the order bare, service, service, bare, each time with a fixed warm-up
and half of the measured window, and merge the halves (so a drift of the shared machine's speed shifts both
alike). Around each run, read the service's RPC counters and how busy both cores were. Print the table, write
`bench/results/latest.json`. Every child process is stopped in a `finally`, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

from bench import counters, dataset, h2load, loadgen, profiling, report
from bench.cores import BusyWindow, cpu_list, pin_process
from bench.processes import Child
from bench.report import Comparison, Run
from bench.servers import ROOT, Placement, start_bare, start_service, tail

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "latest.json"
SERVICE_PATH = "/entitlements.v1.EntitlementService/"
SERVERS = ("bare", "service")
ABBA = ("bare", "service", "service", "bare")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=10.0, help="measured window of each run (default 10)")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="load before each measured window (default 2)")
    parser.add_argument("--users", type=int, default=1000, help="players written before the runs (default 1000)")
    parser.add_argument("--h2load-clients", type=int, default=4, help="h2load connections, -c (default 4)")
    parser.add_argument("--h2load-streams", type=int, default=8, help="h2load streams per connection, -m (default 8)")
    parser.add_argument("--processes", type=int, default=2, help="Python load worker processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight per Python worker (default 32)")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument("--valkey-core", type=int, default=None, help="embedded Valkey's core (default: load core)")
    parser.add_argument(
        "--no-h2load", action="store_true", help="use only the Python generator, as when h2load is not installed"
    )
    parser.add_argument(
        "--service-log-level",
        default="info",
        help="the service's log level; `info` (the default, as in production) writes one line per RPC",
    )
    parser.add_argument(
        "--profile",
        choices=("python", "native"),
        default=None,
        help="after the runs, sample the service with py-spy under CheckEntitlement load (see bench.profiling)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON results file")
    return parser.parse_args(argv)


def _placement(args: argparse.Namespace) -> Placement:
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return Placement(None, None, None)
    wanted = {args.server_core, args.load_core}
    if args.server_core == args.load_core or not wanted <= set(available):
        raise SystemExit(f"--server-core and --load-core must be two different cores among {available}")
    valkey = args.load_core if args.valkey_core is None else args.valkey_core
    return Placement((args.server_core,), (args.load_core,), (valkey,))


def _print(message: str) -> None:
    print(message, flush=True)


def _print_run(server: str, run: Run) -> None:
    answered = "" if run.server_codes is None else f", answered {dict(run.server_codes)}"
    _print(
        f"  {run.scenario} [{server}]: {run.qps:,.0f} QPS, p50 {run.latency.p50_ms:.2f} ms, "
        f"p99 {run.latency.p99_ms:.2f} ms, busy % {report.busy_text(run)}{answered}"
    )


class Benchmark:
    """One benchmark run: both servers started, the data written; runs scenarios and collects comparisons."""

    def __init__(self, args: argparse.Namespace, placement: Placement, workdir: Path, children: list[Child]) -> None:
        self.args = args
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
        self.service, self.endpoints = start_service(placement, workdir, self.api_key, log_level=args.service_log_level)
        children.append(self.service)
        self.targets = {"bare": bare_target, "service": self.endpoints.target}
        self.pids = {"bare": bare.pid, "service": self.service.pid}
        _print(
            f"bare server {bare_target} (pid {bare.pid}), service {self.endpoints.target} (pid {self.service.pid}), "
            f"its Valkey pid {self.endpoints.valkey_pid}; cores {placement.describe()}"
        )

    def prepare(self) -> None:
        """Writes the data set through the client, then checks sample calls on both servers."""
        started = time.monotonic()
        written = asyncio.run(dataset.populate(self.endpoints.target, self.api_key, self.args.users))
        _print(f"wrote {written} grants for {self.args.users} players in {time.monotonic() - started:.1f} s")
        asyncio.run(dataset.sample_calls(self.endpoints.target, self.api_key, stateful=True))
        asyncio.run(dataset.sample_calls(self.targets["bare"], self.api_key, stateful=False))
        _print("sample calls (CheckEntitlement, replayed Grant) answered OK on both servers")

    def _measured(self, server: str, method: str, window: tuple[float, float], measure: Callable[[], Run]) -> Run:
        """Runs `measure`, adding the cores' busy time over `window` and, for the service, its RPC counts."""
        busy = BusyWindow(*window, pid=self.pids[server])
        before = counters.read(self.endpoints.metrics_url) if server == "service" else None
        run = measure()
        by_core = busy.result()
        codes = None
        if before is not None:
            codes = counters.increase(before, counters.read(self.endpoints.metrics_url), method)
        cores_busy = None
        if self.placement.server is not None and self.placement.load is not None:
            cores_busy = {
                "server_process": busy.process_busy if busy.process_busy is not None else float("nan"),
                "server_core": by_core.get(self.placement.server[0], float("nan")),
                "load_core": by_core.get(self.placement.load[0], float("nan")),
            }
        return dataclasses.replace(run, server_codes=codes, cores_busy=cores_busy)

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
            _print_run(server, runs[server])
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
        _print_run("service", run)
        note = "the service and its Valkey share the server core; bare figures from the first row"
        self.comparisons.append(Comparison(scenario, run, main_check.bare, note))

    def profile(self, mode: str) -> dict[str, Any]:
        """Samples the service with py-spy during one more CheckEntitlement run; returns and prints the summary."""
        raw = self.workdir / "profile.txt"
        sampler = profiling.start(
            self.service.pid,
            duration_s=self.args.duration_s,
            native=mode == "native",
            cores=self.placement.load,
            output=raw,
        )
        try:
            run = h2load.run(
                scenario="profile",
                server="service",
                url=f"http://{self.endpoints.target}{SERVICE_PATH}CheckEntitlement",
                body=h2load.grpc_frame(dataset.check_request()),
                headers=self.auth,
                load=self.load,
                warmup_s=1.0,
                duration_s=self.args.duration_s,
                cores=self.placement.load,
                workdir=self.workdir,
            )
            sampler.process.communicate(timeout=30)
        finally:
            sampler.stop(grace_s=2)
        summary = profiling.summarize(raw)
        summary["mode"] = mode
        summary["qps_while_sampling"] = round(run.qps)
        _print(f"\nprofile ({mode}) of the service under CheckEntitlement load, {run.qps:,.0f} QPS while sampling:")
        _print(profiling.render(summary))
        return summary

    def setup(self) -> dict[str, Any]:
        """What the figures depend on, for the JSON file."""
        args = self.args
        return {
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": platform.machine(),
            "processor": _cpu_model(),
            "cores_online": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "h2load": _h2load_version() if self.use_h2load else "not used",
            "placement": self.placement.describe(),
            "warmup_s": args.warmup_s,
            "duration_s": args.duration_s,
            "users": args.users,
            "h2load_load": self.load.describe(),
            "python_load": f"{args.processes} processes x {args.concurrency} calls in flight",
            "service": "python -m server, embedded Valkey (appendfsync everysec), 1 API key, "
            f"JSON logs to a file at level {args.service_log_level}",
        }


def _h2load_version() -> str:
    binary = h2load.executable()
    if binary is None:
        return "missing"
    return subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout.strip()  # noqa: S603


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Turns SIGTERM and SIGINT into KeyboardInterrupt while the benchmark runs, so `finally` blocks stop the
    children (SIGINT too, because a shell starting the benchmark in the background makes it ignore SIGINT)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, action in previous.items():
            signal.signal(signum, action)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    placement = _placement(args)
    if placement.load is not None:
        os.sched_setaffinity(0, placement.load)  # this process only waits, reads counters and writes the data set
    else:
        _print("fewer than two cores: nothing is pinned, and load and server share the CPU")
    if h2load.executable() is None and not args.no_h2load:
        _print("h2load not found (package nghttp2-client): measuring with the Python load generator only")
    started = time.monotonic()
    children: list[Child] = []
    extra: dict[str, Any] = {}
    with _signals_interrupt(), tempfile.TemporaryDirectory(prefix="ent-bench-") as tmp:
        workdir = Path(tmp)
        try:
            benchmark = Benchmark(args, placement, workdir, children)
            benchmark.prepare()
            benchmark.run_all()
            if args.profile is not None and benchmark.use_h2load:
                extra["profile"] = benchmark.profile(args.profile)
            elif args.profile is not None:
                _print("--profile needs h2load to drive the load; skipped")
            setup = benchmark.setup()
        except KeyboardInterrupt:
            _print("interrupted: stopping the servers and load generators")
            return 130
        except BaseException:
            for log in ("service.log", "bare.log"):
                _print(f"--- last lines of {log} ---\n{tail(workdir / log)}")
            raise
        finally:
            for child in reversed(children):
                code = child.stop()
                if code not in (0, -signal.SIGTERM):
                    _print(f"{child.name} exited with code {code}")
    _print("\n" + report.table(benchmark.comparisons))
    _print(f"\ncores: {setup['placement']}")
    report.write_json(args.output, setup, benchmark.comparisons, extra)
    _print(f"results written to {args.output}; the whole benchmark took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
