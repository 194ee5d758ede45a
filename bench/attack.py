"""The gateway under attack: valid webhooks at a steady rate, alone and then while senders without a secret
post 1 MiB badly signed bodies as fast as they can.

What is measured, on one gateway (`python -m webhook_gateway` as deployed, storing into its own Valkey):

1. quiet: one sender process (`python -m bench.attack send`) POSTs signed, distinct `order_paid` webhooks at
   `rate_per_s`, open loop (each at its scheduled time, whatever the previous ones are doing), for `duration_s`;
2. attacked: the same, while an attacker process (`python -m bench.attack flood`) keeps `attackers` requests in
   flight, each a `body_bytes` body of JSON-looking bytes (a deeply nested array) under a well-formed signature
   that no secret produced, on keep-alive connections, from a second before the window to its end.

Reported: the valid webhooks' answer time (p50, p99, max, from the request's start to its answer) in both
windows, how many were not answered 204, the attackers' request rate, and the gateway process's CPU over each
window. The goal: p99 of the valid webhooks under 100 ms while attacked.

Placement: the gateway and its Valkey on the server core (Valkey does little here, 50 appends a second); the
senders on the load core, the attacker process there as SCHED_IDLE, so that the valid sender is served first
and the attackers take what is left of that core, which is nearly all of it. Valkey is not on the load core as
in the other parts: the attackers' client keeps that core and its network stack saturated, and Valkey's answers
would then wait on the benchmark's own load, not on the gateway.

`--gateway-tree DIR` runs the gateway from another checkout of the project (e.g. an older commit exported with
`git archive`), with this virtualenv, for a before/after comparison on the same machine in the same hour.

`run_attack()` is what `python -m bench` calls in its gateway part; `python -m bench.attack` runs it alone.
Every child process is stopped in a `finally`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.cores import BusyWindow
from bench.gateway import gateway_results, order_paid_body, signed_headers, start_gateway, start_valkey
from bench.processes import Child, signals_interrupt
from bench.report import percentile, simple_table
from bench.servers import ROOT, Placement

_SECRET_ENV = "BENCH_GATEWAY_SECRET"
# Time for a sender process to import aiohttp and connect before its agreed start.
START_MARGIN_S = 2.0
# The attackers start this long before the measured window, so that it sees them at full rate.
ATTACK_LEAD_S = 1.0
VALID_TIMEOUT_S = 30.0
ATTACK_TIMEOUT_S = 30.0
FIRST_ORDER = 8_000_000_000  # Xsolla order ids are numbers; far from any other part's
PLAYERS = 1000


@dataclasses.dataclass(frozen=True)
class Window:
    """The valid webhooks of one window.

    Attributes:
        sent: webhooks sent; `answered_204`: answered 204; `other`: the rest, by status or error.
        p50_ms, p99_ms, max_ms: answer time, from the request's start to its answer.
        gateway_busy: the gateway process's CPU over the window, in cores (0..1).
    """

    sent: int
    answered_204: int
    other: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    gateway_busy: float | None


@dataclasses.dataclass(frozen=True)
class AttackResult:
    """Valid webhooks alone and under attack.

    Attributes:
        rate_per_s, duration_s: the valid webhooks' rate and each window's length.
        attackers, body_bytes: requests the attackers keep in flight, and each one's body size.
        signature: the attackers' signature header, "wrong" or "missing".
        quiet, attacked: the valid webhooks of each window.
        attack_requests_per_s: the attackers' completed requests per second.
        attack_answers: the attackers' answers by status (or error).
        gateway_results: the gateway's own `gateway_webhooks_total` increase by result, over both windows.
    """

    rate_per_s: float
    duration_s: float
    attackers: int
    body_bytes: int
    signature: str
    quiet: Window
    attacked: Window
    attack_requests_per_s: float
    attack_answers: dict[str, int]
    gateway_results: dict[str, int]


# --- the senders (child processes) ------------------------------------------------------------------------------


async def send_valid(
    url: str, secret: str, *, first_order: int, rate_per_s: float, start_at: float, duration_s: float
) -> dict[str, Any]:
    """Posts signed, distinct order_paid webhooks at `rate_per_s` from `start_at` for `duration_s` (open loop)."""
    count = round(rate_per_s * duration_s)
    statuses: Counter[str] = Counter()
    latencies_us: list[float] = []
    timeout = aiohttp.ClientTimeout(total=VALID_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64), timeout=timeout) as http:

        async def one(number: int) -> None:
            body = order_paid_body(number, f"bench-player-{number % PLAYERS:05d}")
            headers = signed_headers(body, secret)
            started = time.perf_counter()
            try:
                async with http.post(url, data=body, headers=headers) as response:
                    await response.read()
                    status = str(response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            latencies_us.append((time.perf_counter() - started) * 1e6)
            statuses[status] += 1

        # One warm connection before the window, so the first webhooks do not pay for connecting.
        async with http.get(url.rsplit("/webhooks/", 1)[0] + "/healthz") as response:
            await response.read()
        tasks = []
        for index in range(count):
            await asyncio.sleep(max(0.0, start_at + index / rate_per_s - time.time()))
            tasks.append(asyncio.create_task(one(first_order + index)))
        await asyncio.gather(*tasks)
    return {"statuses": dict(statuses), "latencies_us": latencies_us}


async def flood(
    url: str, *, attackers: int, body_bytes: int, start_at: float, end_at: float, signature: str = "wrong"
) -> dict[str, Any]:
    """Keeps `attackers` badly signed (`signature` "wrong") or unsigned ("missing") `body_bytes` bodies in flight
    from `start_at` to `end_at`."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # after everything else on its core
    body = b"[" + b"1.5," * ((body_bytes - 3) // 4) + b"1]"  # each decimal becomes a Decimal when parsed
    statuses: Counter[str] = Counter()
    timeout = aiohttp.ClientTimeout(total=ATTACK_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=attackers), timeout=timeout) as http:
        await asyncio.sleep(max(0.0, start_at - time.time()))

        async def attacker() -> None:
            while time.time() < end_at:
                headers = {"Content-Type": "application/json"}
                if signature == "wrong":
                    headers["Authorization"] = "Signature " + secrets.token_hex(20)
                try:
                    async with http.post(url, data=body, headers=headers) as response:
                        await response.read()
                        status = str(response.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status = type(exc).__name__
                if time.time() <= end_at:
                    statuses[status] += 1

        await asyncio.gather(*(attacker() for _ in range(attackers)))
    return {"statuses": dict(statuses), "seconds": end_at - start_at}


# --- the run ------------------------------------------------------------------------------------------------------


def _child_result(child: Child, deadline: float) -> dict[str, Any]:
    try:
        out, _ = child.process.communicate(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{child.name} did not finish in time") from exc
    if child.process.returncode != 0:
        raise RuntimeError(f"{child.name} exited with code {child.process.returncode}")
    result: dict[str, Any] = json.loads(out)
    return result


def _window(result: dict[str, Any], busy: float | None) -> Window:
    statuses: Counter[str] = Counter(result["statuses"])
    latencies = sorted(result["latencies_us"])
    answered = statuses.pop("204", 0)
    return Window(
        sent=len(latencies),
        answered_204=answered,
        other=dict(statuses),
        p50_ms=percentile(latencies, 0.50) / 1000,
        p99_ms=percentile(latencies, 0.99) / 1000,
        max_ms=latencies[-1] / 1000 if latencies else math.nan,
        gateway_busy=busy,
    )


def run_attack(
    *,
    workdir: Path,
    placement: Placement,
    rate_per_s: float = 50.0,
    duration_s: float = 5.0,
    attackers: int = 32,
    body_bytes: int = 1024 * 1024,
    signature: str = "wrong",
    gateway_tree: Path | None = None,
    log_level: str = "info",
) -> AttackResult:
    """Measures valid webhooks alone, then under attack, on one gateway (see the module docstring).

    Args:
        workdir: an empty scratch directory (Valkey's data and socket, the gateway's log).
        placement: the cores (the gateway and Valkey on the server core, the senders on the load core).
        rate_per_s, duration_s: the valid webhooks' rate, and each window's length in seconds.
        attackers, body_bytes: requests the attackers keep in flight, and their bodies' size (the gateway's
            default limit is 1 MiB, so the default is the largest body it reads).
        signature: the attackers' Authorization header: "wrong" (well-formed, made by no secret: the body must
            be read to find out) or "missing" (refused from the headers).
        gateway_tree: a checkout of the project to run the gateway from (None: this one).
        log_level: the gateway's log level (one line per webhook at `info`, refusals included).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(20)
    env = {**os.environ, _SECRET_ENV: secret}
    children: list[Child] = []
    try:
        valkey, redis_url = start_valkey(workdir, placement.server)
        children.append(valkey)
        gateway, url, metrics_url = start_gateway(
            workdir, redis_url, secret, placement.server, log_level=log_level, tree=gateway_tree
        )
        children.append(gateway)
        before = gateway_results(metrics_url)

        def valid(name: str, first_order: int, start_at: float) -> Child:
            argv = [sys.executable, "-m", "bench.attack", "send", f"--url={url}", f"--first-order={first_order}"]
            argv += [f"--rate={rate_per_s!r}", f"--start-at={start_at!r}", f"--duration-s={duration_s!r}"]
            child = Child(name, argv, cores=placement.load, env=env, cwd=ROOT)
            children.append(child)
            return child

        windows: list[Window] = []
        attack: dict[str, Any] = {}
        for attacked in (False, True):
            start_at = time.time() + START_MARGIN_S + (ATTACK_LEAD_S if attacked else 0.0)
            end_at = start_at + duration_s
            busy = BusyWindow(start_at + 0.2, end_at - 0.2, pid=gateway.pid)
            flooder = None
            if attacked:
                argv = [sys.executable, "-m", "bench.attack", "flood", f"--url={url}", f"--attackers={attackers}"]
                argv += [
                    f"--body-bytes={body_bytes}",
                    f"--signature={signature}",
                    f"--start-at={start_at - ATTACK_LEAD_S!r}",
                ]
                flooder = Child("attackers", [*argv, f"--end-at={end_at!r}"], cores=placement.load, cwd=ROOT)
                children.append(flooder)
            sender = valid("valid sender" + (" (attacked)" if attacked else ""), FIRST_ORDER * (1 + attacked), start_at)
            deadline = end_at + max(VALID_TIMEOUT_S, ATTACK_TIMEOUT_S) + 10
            result = _child_result(sender, deadline)
            if flooder is not None:
                attack = _child_result(flooder, deadline)
            busy.result()
            windows.append(_window(result, busy.process_busy))
        increase = gateway_results(metrics_url) - before
    finally:
        for child in reversed(children):
            child.stop(grace_s=5)
    seconds = attack["seconds"]
    return AttackResult(
        rate_per_s=rate_per_s,
        duration_s=duration_s,
        attackers=attackers,
        body_bytes=body_bytes,
        signature=signature,
        quiet=windows[0],
        attacked=windows[1],
        attack_requests_per_s=sum(attack["statuses"].values()) / seconds,
        attack_answers=dict(attack["statuses"]),
        gateway_results=dict(sorted(increase.items())),
    )


def attack_table(result: AttackResult) -> str:
    """The two windows side by side, and the attackers' rate."""

    def row(name: str, window: Window) -> list[str]:
        busy = "-" if window.gateway_busy is None else f"{window.gateway_busy * 100:.0f}"
        other = ", ".join(f"{status} x{count}" for status, count in sorted(window.other.items())) or "0"
        return [
            name,
            f"{window.sent:,}",
            f"{window.p50_ms:.1f}",
            f"{window.p99_ms:.1f}",
            f"{window.max_ms:.1f}",
            other,
            busy,
        ]

    header = ["valid webhooks", "sent", "p50 ms", "p99 ms", "max ms", "not 204", "gateway CPU %"]
    table = simple_table(
        header,
        [
            row(f"alone, {result.rate_per_s:g}/s", result.quiet),
            row(f"with {result.attackers} attackers", result.attacked),
        ],
    )
    answers = ", ".join(f"{status} x{count:,}" for status, count in sorted(result.attack_answers.items()))
    return (
        f"{table}\nattackers ({result.signature} signature, {result.body_bytes / 2**20:g} MiB bodies): "
        f"{result.attack_requests_per_s:,.0f} requests/s, answered {answers}; goal: p99 < 100 ms while attacked"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attack", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="the measurement (default)")
    send = commands.add_parser("send", help="the valid sender (started by the measurement)")
    send.add_argument("--url", required=True)
    send.add_argument("--first-order", type=int, required=True)
    send.add_argument("--rate", type=float, required=True)
    send.add_argument("--start-at", type=float, required=True)
    send.add_argument("--duration-s", type=float, required=True)
    attack = commands.add_parser("flood", help="the attackers (started by the measurement)")
    attack.add_argument("--url", required=True)
    attack.add_argument("--attackers", type=int, required=True)
    attack.add_argument("--body-bytes", type=int, required=True)
    attack.add_argument("--signature", choices=("wrong", "missing"), required=True)
    attack.add_argument("--start-at", type=float, required=True)
    attack.add_argument("--end-at", type=float, required=True)
    for command in (parser, run):
        command.add_argument("--rate", type=float, default=50.0, help="valid webhooks per second (default 50)")
        command.add_argument("--duration-s", type=float, default=5.0, help="each window (default 5)")
        command.add_argument("--attackers", type=int, default=32, help="attack requests in flight (default 32)")
        command.add_argument("--body-bytes", type=int, default=1024 * 1024, help="attack body size (default 1 MiB)")
        command.add_argument(
            "--signature", choices=("wrong", "missing"), default="wrong", help="the attackers' header (default wrong)"
        )
        command.add_argument("--gateway-tree", type=Path, default=None, help="run the gateway from this checkout")
        command.add_argument("--server-core", type=int, default=0)
        command.add_argument("--load-core", type=int, default=1)
    args = parser.parse_args(argv)

    if args.command == "send":
        secret = os.environ.get(_SECRET_ENV, "")
        result = asyncio.run(
            send_valid(
                args.url,
                secret,
                first_order=args.first_order,
                rate_per_s=args.rate,
                start_at=args.start_at,
                duration_s=args.duration_s,
            )
        )
        json.dump(result, sys.stdout)
        return 0
    if args.command == "flood":
        attack_run = flood(
            args.url,
            attackers=args.attackers,
            body_bytes=args.body_bytes,
            start_at=args.start_at,
            end_at=args.end_at,
            signature=args.signature,
        )
        json.dump(asyncio.run(attack_run), sys.stdout)
        return 0

    placement = Placement.for_cores(args.server_core, args.load_core, None)
    if placement.load is not None:
        os.sched_setaffinity(0, placement.load)
    with signals_interrupt(), tempfile.TemporaryDirectory(prefix="ent-bench-attack-") as tmp:
        outcome = run_attack(
            workdir=Path(tmp),
            placement=placement,
            rate_per_s=args.rate,
            duration_s=args.duration_s,
            attackers=args.attackers,
            body_bytes=args.body_bytes,
            signature=args.signature,
            gateway_tree=args.gateway_tree,
        )
    print(attack_table(outcome))
    print(json.dumps(dataclasses.asdict(outcome)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
