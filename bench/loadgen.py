"""A multi-process grpc.aio load generator, for calls h2load cannot make: Grants with distinct idempotency keys.

h2load repeats one request body, so against Grant it would only measure idempotent replays. Here each worker
process builds every request afresh: Grant gets a new idempotency key per call (`<run>:<worker>:<n>`), and
both Grant and CheckEntitlement cycle through the pre-populated players. Each worker keeps `concurrency`
calls in flight on one channel, starts at an agreed wall-clock time, discards the warm-up, and counts the
calls that complete inside the measured window with their latencies.

A Python client spends about 160 µs of CPU per call, several times what h2load does, so on one core this
generator saturates at a few thousand calls per second: it measures the servers only while their QPS stays
well below that. The report gives its figures as a separate, labelled row.

Workers run as `python -m bench.loadgen worker ...` and print one JSON object on stdout; `run()` starts them,
pinned, and merges their results. The API key comes from the BENCH_API_KEY environment variable, not argv.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from bench.dataset import GRANT_SKU, user_id
from bench.processes import Child
from bench.report import Latency, Run, tally
from entitlements.v1 import entitlements_pb2 as pb

SERVICE = "/entitlements.v1.EntitlementService/"
METHODS = ("CheckEntitlement", "Grant")
CALL_TIMEOUT_S = 5.0
# Time for every worker to import grpc and connect before the agreed start.
START_MARGIN_S = 2.0


def _request_factory(method: str, run_id: str, worker: int, users: int) -> Callable[[int], bytes]:
    """Returns `n -> serialized request number n` for this worker."""
    if method == "CheckEntitlement":

        def check(n: int) -> bytes:
            return pb.CheckEntitlementRequest(user_id=user_id(n % users), sku=GRANT_SKU).SerializeToString()

        return check

    def grant(n: int) -> bytes:
        return pb.GrantRequest(
            user_id=user_id(n % users),
            sku=GRANT_SKU,
            quantity=1,
            kind=pb.ENTITLEMENT_KIND_CONSUMABLE,
            idempotency_key=f"{run_id}:{worker}:{n}",
            reason="bench",
        ).SerializeToString()

    return grant


async def _worker(
    target: str,
    method: str,
    *,
    run_id: str,
    worker: int,
    concurrency: int,
    users: int,
    start_at: float,
    warmup_s: float,
    duration_s: float,
    api_key: str | None,
) -> dict[str, Any]:
    """Drives `method` on `target` and returns what completed inside the measured window."""
    make_request = _request_factory(method, run_id, worker, users)
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    window_start = start_at + warmup_s
    window_end = window_start + duration_s
    latencies_us: list[float] = []
    codes: Counter[str] = Counter()
    sequence = itertools.count()
    async with grpc.aio.insecure_channel(target) as channel:
        # Raw bytes in and out: the generator's own CPU goes to gRPC, not to (de)serializing responses.
        call = channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)
        await channel.channel_ready()
        await asyncio.sleep(max(0.0, start_at - time.time()))

        async def loop() -> None:
            while time.time() < window_end:
                request = make_request(next(sequence))
                started = time.perf_counter()
                try:
                    await call(request, timeout=CALL_TIMEOUT_S, metadata=metadata)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                elapsed_us = (time.perf_counter() - started) * 1e6
                # Throughput counts completions inside the window, as h2load does.
                if window_start <= time.time() <= window_end:
                    latencies_us.append(elapsed_us)
                    codes[code] += 1

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return {"codes": dict(codes), "latencies_us": latencies_us}


def run(
    *,
    scenario: str,
    server: str,
    target: str,
    method: str,
    processes: int,
    concurrency: int,
    users: int,
    warmup_s: float,
    duration_s: float,
    cores: Sequence[int] | None,
    api_key: str | None,
    run_id: str,
    cwd: Path,
) -> Run:
    """Runs `processes` workers against `target` and merges their counts into one `Run`.

    Args:
        scenario, server: labels for the report.
        target: `host:port`.
        method: "CheckEntitlement" or "Grant".
        processes: worker processes, all pinned to `cores`.
        concurrency: calls in flight per worker.
        users: how many pre-populated players to cycle through.
        warmup_s, duration_s: the discarded warm-up and the measured window, in seconds.
        cores: where the workers run.
        api_key: sent as a bearer token (None: no authorization header).
        run_id: makes this run's idempotency keys unique.
        cwd: the directory the workers start in (the repository root, so `bench` imports).

    Raises:
        RuntimeError: a worker failed or did not finish in time.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    start_at = time.time() + START_MARGIN_S
    env = dict(os.environ)
    env.pop("BENCH_API_KEY", None)
    if api_key:
        env["BENCH_API_KEY"] = api_key
    workers: list[Child] = []
    try:
        for number in range(processes):
            argv = [
                sys.executable,
                "-m",
                "bench.loadgen",
                "worker",
                f"--target={target}",
                f"--method={method}",
                f"--run-id={run_id}",
                f"--worker={number}",
                f"--concurrency={concurrency}",
                f"--users={users}",
                f"--start-at={start_at!r}",
                f"--warmup-s={warmup_s!r}",
                f"--duration-s={duration_s!r}",
            ]
            workers.append(Child(f"load worker {number}", argv, cores=cores, env=env, cwd=cwd))
        results = []
        deadline = start_at + warmup_s + duration_s + CALL_TIMEOUT_S + 10
        for child in workers:
            try:
                out, _ = child.process.communicate(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired as exc:
                raise RuntimeError(f"{child.name} did not finish in time") from exc
            if child.process.returncode != 0:
                raise RuntimeError(f"{child.name} exited with code {child.process.returncode}")
            results.append(json.loads(out))
    finally:
        for child in workers:
            child.stop(grace_s=2)
    codes, latencies = tally(results, "codes")
    completed = sum(codes.values())
    return Run(
        scenario=scenario,
        server=server,
        generator=f"python {processes} proc x {concurrency} calls",
        duration_s=duration_s,
        completed=completed,
        failed=completed - codes["OK"],
        qps=completed / duration_s,
        latency=Latency.from_micros(latencies),
        samples_us=tuple(latencies),
    )


def main(argv: Sequence[str] | None = None) -> None:
    """The worker's command line (`python -m bench.loadgen worker ...`); prints its result as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="one load process (started by bench)")
    worker.add_argument("--target", required=True)
    worker.add_argument("--method", choices=METHODS, required=True)
    worker.add_argument("--run-id", required=True)
    worker.add_argument("--worker", type=int, required=True)
    worker.add_argument("--concurrency", type=int, required=True)
    worker.add_argument("--users", type=int, required=True)
    worker.add_argument("--start-at", type=float, required=True)
    worker.add_argument("--warmup-s", type=float, required=True)
    worker.add_argument("--duration-s", type=float, required=True)
    args = parser.parse_args(argv)
    result = asyncio.run(
        _worker(
            args.target,
            args.method,
            run_id=args.run_id,
            worker=args.worker,
            concurrency=args.concurrency,
            users=args.users,
            start_at=args.start_at,
            warmup_s=args.warmup_s,
            duration_s=args.duration_s,
            api_key=os.environ.get("BENCH_API_KEY") or None,
        )
    )
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
