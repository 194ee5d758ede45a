"""What durable acknowledgment costs: webhooks/s and latency of the gateway with each `GATEWAY_DURABILITY`.

One store for every setting: a Valkey primary with an append-only file (`appendfsync everysec`, as the service's
embedded one) and one real replica attached to it over loopback TCP (no append-only file), both on the load core.
The replica stays attached in every run, so the runs differ only in what the 204 waits for:

- `none`: nothing (the baseline);
- `local`: `WAITAOF 1 0`: the primary's next fsync (Valkey fsyncs once a second under `everysec`, in the
  background; every webhook waiting meanwhile is released by the same fsync);
- `replicas`: `WAIT 1`: the replica's acknowledgment.

A fresh gateway (`python -m webhook_gateway` as deployed, pinned to the server core) per setting, the same load
(`bench.gateway`'s Python load processes, distinct signed order_paid webhooks) for the same time after a warm-up,
in the order none, local, replicas. Reported: webhooks/s, p50/p99/max as the senders saw them, answers other than
204 (the gateway's own count of `not_durable`/`unavailable`), and the ratios to `none`. With a fixed number of
requests in flight, the rate is bounded by in-flight / latency: a wait of half a second on average caps 64
requests in flight at about 130 webhooks/s, whatever the CPU; the gateway's CPU per webhook does not change.

`run_durability()` is what `python -m bench` calls in its `gateway` part; `python -m bench.durability` runs it
alone. Every child process is stopped in a `finally`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.gateway import gateway_results, measure_load, start_gateway, start_valkey
from bench.processes import Child, signals_interrupt
from bench.servers import free_port

MODES = ("none", "local", "replicas")


@dataclasses.dataclass(frozen=True)
class DurabilityRun:
    """One setting's run."""

    mode: str
    webhooks_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    completed: int
    failed: int
    gateway_results: dict[str, int]
    server_busy: float | None


@dataclasses.dataclass(frozen=True)
class DurabilityResult:
    """Every setting's run under the same load."""

    load: str
    duration_s: float
    appendfsync: str
    runs: list[DurabilityRun]

    def run(self, mode: str) -> DurabilityRun:
        return next(run for run in self.runs if run.mode == mode)

    def table(self) -> str:
        """The runs with their ratios to `none`."""
        base = self.run("none")
        lines = [
            f"durable acknowledgment, {self.load}, {self.duration_s:g} s per setting "
            f"(primary: AOF appendfsync {self.appendfsync}; one replica attached throughout)",
            f"{'setting':<10} {'webhooks/s':>11} {'x none':>7} {'p50 ms':>8} {'p99 ms':>8} {'x none':>7} "
            f"{'max ms':>8} {'non-204':>8}  gateway results",
        ]
        for run in self.runs:
            lines.append(
                f"{run.mode:<10} {run.webhooks_per_s:>11,.0f} {run.webhooks_per_s / base.webhooks_per_s:>7.2f} "
                f"{run.p50_ms:>8.1f} {run.p99_ms:>8.1f} {run.p99_ms / base.p99_ms:>7.1f} {run.max_ms:>8.1f} "
                f"{run.failed:>8}  {run.gateway_results}"
            )
        return "\n".join(lines)


def run_durability(
    *,
    workdir: Path,
    warmup_s: float = 2.0,
    duration_s: float = 5.0,
    processes: int = 2,
    concurrency: int = 32,
    server_cores: Sequence[int] | None = None,
    load_cores: Sequence[int] | None = None,
    log_level: str = "info",
    appendfsync: str = "everysec",
) -> DurabilityResult:
    """Loads a gateway with each durability setting in turn, on one primary with one replica.

    Args:
        workdir: an empty scratch directory (the stores' data, the gateways' logs).
        warmup_s, duration_s: each setting's discarded warm-up and measured time, in seconds.
        processes, concurrency: load processes, and requests in flight in each.
        server_cores: where the gateways run. load_cores: the load processes, the primary and the replica.
        log_level: the gateways' log level.
        appendfsync: the primary's `appendfsync` (`everysec`, as the embedded store; `always` for comparison).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    secret = hashlib.sha256(os.urandom(16)).hexdigest()
    load = f"python {processes}x{concurrency}"
    server_core = server_cores[0] if server_cores else None
    children: list[Child] = []
    runs: list[DurabilityRun] = []
    try:
        port = free_port()
        primary, redis_url = start_valkey(workdir, load_cores, name="primary", port=port, appendfsync=appendfsync)
        children.append(primary)
        children.append(start_valkey(workdir, load_cores, name="replica", aof=False, replica_of=port)[0])
        for number, mode in enumerate(MODES, start=1):
            gateway, url, metrics_url = start_gateway(
                workdir, redis_url, secret, server_cores, log_level=log_level, durability=mode, name=f"gateway-{mode}"
            )
            try:
                before = gateway_results(metrics_url)
                run = measure_load(
                    server=f"gateway {mode}",
                    scenario=f"durability {mode}",
                    url=url,
                    secret=secret,
                    first_order=number * 100_000_000,
                    processes=processes,
                    concurrency=concurrency,
                    warmup_s=warmup_s,
                    duration_s=duration_s,
                    cores=load_cores,
                    server_pid=gateway.pid,
                    server_core=server_core,
                )
                counted = gateway_results(metrics_url) - before
            finally:
                gateway.stop(grace_s=5)
            busy = run.cores_busy.get("server_process") if run.cores_busy else None
            runs.append(
                DurabilityRun(
                    mode=mode,
                    webhooks_per_s=run.qps,
                    p50_ms=run.latency.p50_ms,
                    p99_ms=run.latency.p99_ms,
                    max_ms=run.latency.max_ms,
                    completed=run.completed,
                    failed=run.failed,
                    gateway_results=dict(sorted(counted.items())),
                    server_busy=busy,
                )
            )
    finally:
        for child in reversed(children):
            child.stop(grace_s=5)
    return DurabilityResult(load=load, duration_s=duration_s, appendfsync=appendfsync, runs=runs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.durability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--server-core", type=int, default=None)
    parser.add_argument("--load-core", type=int, default=None)
    parser.add_argument("--appendfsync", choices=("everysec", "always"), default="everysec")
    args = parser.parse_args(argv)
    server = None if args.server_core is None else (args.server_core,)
    load = None if args.load_core is None else (args.load_core,)
    with signals_interrupt(), tempfile.TemporaryDirectory(prefix="ent-bench-durable-") as tmp:
        result = run_durability(
            workdir=Path(tmp),
            warmup_s=args.warmup_s,
            duration_s=args.duration_s,
            processes=args.processes,
            concurrency=args.concurrency,
            server_cores=server,
            load_cores=load,
            appendfsync=args.appendfsync,
        )
    print(result.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
