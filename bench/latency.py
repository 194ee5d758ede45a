"""From a webhook's 204 to the update on every stream watching its order: the latency a game server sees.

Setup, on the benchmark's cores:

- core 0: the service (`python -m server`: gRPC, the webhook consumer and the order-status feed in one process);
- core 1: its embedded Valkey, the real webhook gateway (`python -m webhook_gateway`, storing into that Valkey),
  the watcher processes holding the streams (`bench.watchers`) and the webhook sender.

`orders` orders (rate x duration: one webhook each) get `streams_per_order` streams each, opened without a
token on orders nothing has stored yet, so they stay open waiting (webhooks are their only source). Once the
service counts every stream (`entitlements_order_watchers`), a sender process (`python -m bench.latency send`,
aiohttp, keep-alive connections) POSTs one signed `order_paid` per order at a steady rate (open loop: each
webhook goes at its scheduled time whatever the previous ones are doing), and records when each 204 arrived.

The path measured: gateway (signature, parse, XADD) -> 204; meanwhile the service's consumer reads the event,
grants the items (Lua), publishes the order's state (PUBLISH) -> the service's feed -> the order's tracker -> every
stream's queue -> gRPC -> the watcher process, which records the arrival. Every update is the DONE the tracker
derives from a paid and granted order without a token (source WEBHOOK), after which the stream ends.

Per update: (arrival on the stream) - (the sender's receipt of the 204), both on `time.monotonic()`, which on
Linux is CLOCK_MONOTONIC, one clock for every process of the machine. The consumer may apply an event before
the 204 reaches the sender, so a latency can be slightly negative. A stream whose order got its 204 but that saw
no update within `drain_s` is a missed update.

`run_latency()` is what `python -m bench` calls; `python -m bench.latency` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench import counters
from bench.cores import BusyWindow
from bench.gateway import order_paid_body, signed_headers, start_gateway
from bench.processes import Child, signals_interrupt
from bench.report import percentile, simple_table
from bench.servers import ROOT, Placement, start_service
from bench.stores import BenchCluster
from bench.watchers import Watchers
from entitlements.v1 import entitlements_pb2 as pb

_SECRET_ENV = "BENCH_GATEWAY_SECRET"
# Time for the sender to import aiohttp and connect before its agreed start.
START_MARGIN_S = 1.5
REQUEST_TIMEOUT_S = 10.0
FIRST_ORDER = 7_000_000_000  # Xsolla order ids are numbers; far from any other part's


@dataclasses.dataclass(frozen=True)
class LatencyResult:
    """Webhook-to-stream latency under a steady webhook rate.

    Attributes:
        rate_per_s: webhooks per second asked for; `achieved_rate_per_s`: sent (first to last, by send time).
        webhooks: webhooks sent; `answered_204`: answered 204 (the others, by status, in `webhook_errors`).
        streams: streams open (every one watching an order that got a webhook); `streams_per_order`.
        updates: updates that arrived; `missed`: streams whose order got its 204 but that saw no update.
        p50_ms, p99_ms, max_ms, min_ms: 204 -> update on the stream.
        from_send_p50_ms, from_send_p99_ms: from the moment the webhook was sent to the update.
        webhook_p50_ms, webhook_p99_ms: the gateway's answer time (send -> 204).
        late_sends_p99_ms: how late the sender was on its schedule (open loop: near 0 means a steady rate).
        cores_busy: over the sending window: the service process, the server core, the load core (0..1).
    """

    rate_per_s: float
    achieved_rate_per_s: float
    webhooks: int
    answered_204: int
    webhook_errors: dict[str, int]
    streams: int
    streams_per_order: int
    updates: int
    missed: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    min_ms: float
    from_send_p50_ms: float
    from_send_p99_ms: float
    webhook_p50_ms: float
    webhook_p99_ms: float
    late_sends_p99_ms: float
    cores_busy: dict[str, float] | None


# --- the sender ---------------------------------------------------------------------------------------------------


async def _send(url: str, secret: str, *, count: int, rate_per_s: float, start_at: float, connections: int) -> Any:
    """POSTs `count` signed order_paid webhooks, order FIRST_ORDER + i at `start_at + i / rate_per_s`.

    Returns:
        [[order number, scheduled at, sent at, 204 received at, status], ...], times on time.monotonic().
    """
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    results: list[list[Any]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections), timeout=timeout) as http:

        async def one(number: int, scheduled_at: float, *, record: bool = True) -> None:
            body = order_paid_body(number, player_of(number))
            headers = signed_headers(body, secret)
            sent_at = time.monotonic()
            try:
                async with http.post(url, data=body, headers=headers) as response:
                    answered_at = time.monotonic()
                    status = str(response.status)
                    await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                answered_at, status = time.monotonic(), type(exc).__name__
            if record:
                results.append([number, scheduled_at, sent_at, answered_at, status])

        # Open the connections before the start with webhooks of orders nobody watches (the same path), so the
        # measured ones do not pay for TCP handshakes.
        await asyncio.gather(*(one(FIRST_ORDER - 1 - k, 0.0, record=False) for k in range(connections)))
        await asyncio.sleep(max(0.0, start_at - time.monotonic() - 0.5))
        tasks = []
        for index in range(count):
            scheduled_at = start_at + index / rate_per_s
            delay = scheduled_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(FIRST_ORDER + index, scheduled_at)))
        await asyncio.gather(*tasks)
    return results


def player_of(number: int) -> str:
    """The player of order `number` (one player per order)."""
    return f"bench-latency-player-{number}"


# --- the measurement ----------------------------------------------------------------------------------------------


def _wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.1)


def run_latency(
    *,
    workdir: Path,
    placement: Placement,
    rate_per_s: float = 200.0,
    duration_s: float = 10.0,
    streams_per_order: int = 2,
    processes: int = 2,
    channels: int = 2,
    connections: int = 16,
    drain_s: float = 10.0,
    log_level: str = "info",
    say: Callable[[str], None] = print,
    cluster: BenchCluster | None = None,
) -> LatencyResult:
    """Measures webhook-to-stream latency (see the module docstring); stops everything it started.

    Args:
        workdir: an empty scratch directory.
        placement: the cores (the gateway, the watchers and the sender go on the load core).
        rate_per_s, duration_s: the webhook rate and how long it is kept up; one order per webhook.
        streams_per_order: streams watching each order.
        processes, channels: watcher processes, and connections each.
        connections: the sender's keep-alive connections to the gateway.
        drain_s: how long after the last 204 the streams may take to receive their update.
        log_level: the service's and gateway's log level.
        cluster: a started Redis Cluster for the service and the gateway (`--cluster`); None for the service's
            embedded Valkey.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    api_key = secrets.token_urlsafe(24)
    secret = secrets.token_hex(20)
    count = round(rate_per_s * duration_s)
    numbers = [FIRST_ORDER + i for i in range(count)]
    # Stream s of order i is stream number s * count + i: the watchers (dealt round-robin) get a mix.
    stream_orders = [(str(n), player_of(n)) for _ in range(streams_per_order) for n in numbers]
    children: list[Child] = []
    watchers: Watchers | None = None
    try:
        service, endpoints = start_service(
            placement,
            workdir,
            api_key,
            log_level=log_level,
            extra_env={"ENTITLEMENTS_MAX_ORDER_TRACKERS": str(max(10_000, count))},
            name="service (latency)",
            cluster=cluster,
        )
        children.append(service)
        gateway, gateway_url, _ = start_gateway(
            workdir,
            endpoints.redis_url,
            secret,
            placement.load,
            log_level=log_level,
            extra_env=None if cluster is None else cluster.env(),
        )
        children.append(gateway)
        watchers = Watchers(
            target=endpoints.target,
            api_key=api_key,
            orders=stream_orders,
            processes=processes,
            channels=channels,
            cores=placement.load,
            workdir=workdir,
            await_first=False,
        )
        watchers.open()
        _wait_for(
            lambda: counters.gauge(endpoints.metrics_url, "entitlements_order_watchers") == len(stream_orders),
            60.0,
            f"the service to hold {len(stream_orders)} streams",
        )
        time.sleep(1.0)  # let the burst of opening settle
        start_at = time.monotonic() + START_MARGIN_S
        wall_start = time.time() + START_MARGIN_S
        busy = BusyWindow(wall_start + 0.2, wall_start + duration_s - 0.2, pid=service.pid)
        sender = Child(
            "webhook sender",
            [
                sys.executable,
                "-m",
                "bench.latency",
                "send",
                f"--url={gateway_url}",
                f"--count={count}",
                f"--rate={rate_per_s!r}",
                f"--start-at={start_at!r}",
                f"--connections={connections}",
            ],
            cores=placement.load,
            env={**os.environ, _SECRET_ENV: secret},
            log_path=workdir / "sender.log",
            cwd=ROOT,
        )
        children.append(sender)
        sent = sender.receive(START_MARGIN_S + duration_s + REQUEST_TIMEOUT_S + 30)["webhooks"]
        by_core = busy.result()
        records = watchers.finish(drain_s)
    finally:
        if watchers is not None:
            watchers.stop()
        for child in reversed(children):
            child.stop()
    cores_busy = None
    if placement.server is not None and placement.load is not None:
        cores_busy = {
            "server_process": busy.process_busy if busy.process_busy is not None else math.nan,
            "server_core": by_core.get(placement.server[0], math.nan),
            "load_core": by_core.get(placement.load[0], math.nan),
        }
    result = _summarize(
        sent,
        records,
        watchers.shares,
        rate_per_s=rate_per_s,
        streams_per_order=streams_per_order,
        cores_busy=cores_busy,
    )
    say(
        f"  {result.webhooks} webhooks at {result.achieved_rate_per_s:.0f}/s, {result.streams} streams: "
        f"204 -> update p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, max {result.max_ms:.1f} ms; "
        f"{result.updates} updates, {result.missed} missed"
    )
    return result


def _summarize(
    sent: Sequence[Sequence[Any]],
    records: Sequence[dict[str, Any]],
    shares: Sequence[Sequence[tuple[str, str]]],
    *,
    rate_per_s: float,
    streams_per_order: int,
    cores_busy: dict[str, float] | None,
) -> LatencyResult:
    answered = {
        str(number): (sent_at, answered_at) for number, _, sent_at, answered_at, status in sent if status == "204"
    }
    webhook_errors = Counter(str(status) for *_, status in sent if status != "204")
    latencies_ms: list[float] = []
    from_send_ms: list[float] = []
    missed = 0
    streams = 0
    for share, record in zip(shares, records, strict=True):
        for (order_id, _), messages in zip(share, record["streams"], strict=True):
            streams += 1
            if order_id not in answered:
                continue
            sent_at, answered_at = answered[order_id]
            arrivals = [
                t
                for t, status, source in messages
                if status == pb.ORDER_STATUS_DONE and source == pb.ORDER_STATUS_SOURCE_WEBHOOK
            ]
            if not arrivals:
                missed += 1
                continue
            latencies_ms.append((arrivals[0] - answered_at) * 1000)
            from_send_ms.append((arrivals[0] - sent_at) * 1000)
    latencies_ms.sort()
    from_send_ms.sort()
    webhook_ms = sorted((answered_at - sent_at) * 1000 for sent_at, answered_at in answered.values())
    late_ms = sorted(max(0.0, (sent_at - scheduled_at) * 1000) for _, scheduled_at, sent_at, _, _ in sent)
    send_times = sorted(sent_at for _, _, sent_at, _, _ in sent)
    span = send_times[-1] - send_times[0] if len(send_times) > 1 else math.nan
    return LatencyResult(
        rate_per_s=rate_per_s,
        achieved_rate_per_s=round((len(send_times) - 1) / span, 1) if span and span > 0 else math.nan,
        webhooks=len(sent),
        answered_204=len(answered),
        webhook_errors=dict(webhook_errors),
        streams=streams,
        streams_per_order=streams_per_order,
        updates=len(latencies_ms),
        missed=missed,
        p50_ms=round(percentile(latencies_ms, 0.50), 2),
        p99_ms=round(percentile(latencies_ms, 0.99), 2),
        max_ms=round(latencies_ms[-1], 2) if latencies_ms else math.nan,
        min_ms=round(latencies_ms[0], 2) if latencies_ms else math.nan,
        from_send_p50_ms=round(percentile(from_send_ms, 0.50), 2),
        from_send_p99_ms=round(percentile(from_send_ms, 0.99), 2),
        webhook_p50_ms=round(percentile(webhook_ms, 0.50), 2),
        webhook_p99_ms=round(percentile(webhook_ms, 0.99), 2),
        late_sends_p99_ms=round(percentile(late_ms, 0.99), 2),
        cores_busy=cores_busy,
    )


POLL_INTERVAL_S = 3.0


def latency_table(result: LatencyResult) -> str:
    """The latency result next to what polling Get order every 3 s gives (computed, see docs/benchmarks.md)."""
    header = ("how the game server learns", "p50 ms", "p99 ms", "max ms", "updates", "missed")
    rows = [
        (
            f"GetOrderStatus stream, {result.achieved_rate_per_s:.0f} webhooks/s, {result.streams:,} streams "
            "(from the 204)",
            f"{result.p50_ms:.1f}",
            f"{result.p99_ms:.1f}",
            f"{result.max_ms:.1f}",
            f"{result.updates:,}",
            str(result.missed),
        ),
        (
            "  the same, from sending the webhook",
            f"{result.from_send_p50_ms:.1f}",
            f"{result.from_send_p99_ms:.1f}",
            "-",
            "",
            "",
        ),
        (
            f"polling Get order every {POLL_INTERVAL_S:g} s (computed, plus one request)",
            f"{POLL_INTERVAL_S * 500:.0f}",
            f"{POLL_INTERVAL_S * 990:.0f}",
            f"{POLL_INTERVAL_S * 1000:.0f}",
            "",
            "",
        ),
    ]
    return simple_table(header, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="the measurement (default)")
    send = commands.add_parser("send", help="the webhook sender (started by the measurement)")
    send.add_argument("--url", required=True)
    send.add_argument("--count", type=int, required=True)
    send.add_argument("--rate", type=float, required=True)
    send.add_argument("--start-at", type=float, required=True, help="time.monotonic() of the first webhook")
    send.add_argument("--connections", type=int, default=16)
    for command in (parser, run):
        command.add_argument("--rate", type=float, default=200.0, help="webhooks per second (default 200)")
        command.add_argument("--duration-s", type=float, default=10.0)
        command.add_argument("--streams-per-order", type=int, default=2)
        command.add_argument("--server-core", type=int, default=0)
        command.add_argument("--load-core", type=int, default=1)
    args = parser.parse_args(argv)
    if args.command == "send":
        webhooks = asyncio.run(
            _send(
                args.url,
                os.environ.get(_SECRET_ENV, ""),
                count=args.count,
                rate_per_s=args.rate,
                start_at=args.start_at,
                connections=args.connections,
            )
        )
        print(json.dumps({"webhooks": webhooks}), flush=True)
        return 0
    placement = Placement.for_cores(args.server_core, args.load_core, None)
    with signals_interrupt(), tempfile.TemporaryDirectory(prefix="ent-bench-latency-") as tmp:
        result = run_latency(
            workdir=Path(tmp),
            placement=placement,
            rate_per_s=args.rate,
            duration_s=args.duration_s,
            streams_per_order=args.streams_per_order,
        )
    print(latency_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
