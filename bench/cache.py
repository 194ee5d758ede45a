"""The Python client's entitlement cache: how fast it answers, and how soon a grant reaches every cache watching.

Checks (`checks`): one process pinned to the server core (the cache is what is measured) fills a cache of `players`
players x `skus` items each through the real client and a real gRPC stream (a minimal WatchEntitlements server in
the same process sends the snapshots, then heartbeats), then times `cache.check(user_id, sku)` over pairs drawn at
random: a quarter of the items time-limited (some expired), and half the pairs naming a sku the player does not
hold. The baselines, in the same process and run, over the same pairs: a method that does nothing (the floor of any
call in Python), and a function doing only the cache's two dictionary lookups (the floor of its data layout: on a
shared machine, random access to 1,000 players' items is bound by memory, not by the interpreter). Between rounds the
loop runs, so heartbeats keep the cache fresh, as in a game server.

Propagation (`propagation`): the service (`python -m server`) on the server core; on the load core, `processes`
watcher processes (`python -m bench.cache watch`) each holding `caches / processes` caches, each cache on its own
connection, all watching the same `players` players; this process sends Grants at `rate_per_s` for `duration_s`
(open loop), each of a new sku, round-robin over the players. For each grant and each cache: the time from the
Grant's answer (and from its send) to the change being applied in the cache, on `time.monotonic()` (one clock for
every process of the machine). A (grant, cache) pair with no arrival within `drain_s` is missed.

`run_cache()` is what `python -m bench` calls; `python -m bench.cache` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from bench.processes import Child, signals_interrupt
from bench.report import percentile, simple_table
from bench.servers import ROOT, Placement, start_service, tail
from bench.stores import BenchCluster
from entitlements import AsyncEntitlementsClient
from entitlements.errors import EntitlementsError
from entitlements.v1 import entitlements_pb2 as pb

API_KEY_ENV = "BENCH_API_KEY"
GOAL_CHECKS_PER_S = 1_000_000
GOAL_P99_MS = 50.0


@dataclasses.dataclass(frozen=True)
class ChecksResult:
    """`cache.check` in one process: checks per second (median of the rounds), and the do-nothing baseline."""

    players: int
    skus: int
    checks_per_round: int
    rounds: int
    checks_per_s: float
    best_checks_per_s: float
    noop_calls_per_s: float
    lookups_per_s: float
    hit_ratio: float

    @property
    def ratio(self) -> float:
        return self.checks_per_s / self.noop_calls_per_s


@dataclasses.dataclass(frozen=True)
class PropagationResult:
    """Grant -> applied in every watching cache."""

    caches: int
    processes: int
    players: int
    rate_per_s: float
    grants: int
    grant_errors: dict[str, int]
    arrivals: int
    missed: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    from_send_p50_ms: float
    from_send_p99_ms: float
    grant_p99_ms: float
    cache_counters: list[dict[str, int]]


# --- checks -------------------------------------------------------------------------------------------------------


def _items(user_id: str, skus: int, now: float) -> list[pb.Entitlement]:
    items = []
    for index in range(skus):
        item = pb.Entitlement(user_id=user_id, sku=f"sku_{index:03d}", quantity=1 + index % 3)
        if index % 4 == 0:
            item.kind = pb.ENTITLEMENT_KIND_TIME_LIMITED
            # Every other time-limited item has expired: the check reads the clock and answers inactive.
            item.expires_at.FromNanoseconds(int((now + (3600 if index % 8 == 0 else -60)) * 1e9))
        else:
            item.kind = pb.ENTITLEMENT_KIND_PERMANENT if index % 4 == 1 else pb.ENTITLEMENT_KIND_CONSUMABLE
        items.append(item)
    return items


class _SnapshotServer:
    """WatchEntitlements reduced to what filling a cache needs: a snapshot per player asked for, then heartbeats."""

    def __init__(self, skus: int) -> None:
        self._skus = skus

    async def watch(
        self, requests: AsyncIterator[pb.WatchEntitlementsRequest], context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchEntitlementsResponse]:
        first = await anext(requests)
        now = time.time()
        for user_id in first.add_user_ids:
            yield pb.WatchEntitlementsResponse(
                snapshot=pb.PlayerSnapshot(user_id=user_id, version=1, entitlements=_items(user_id, self._skus, now))
            )
        interval = first.heartbeat_interval.ToTimedelta().total_seconds()
        while True:
            await asyncio.sleep(interval)
            yield pb.WatchEntitlementsResponse(heartbeat=pb.Heartbeat(), cursor="bench")


class _Noop:
    def check(self, user_id: str, sku: str) -> None:
        return None


async def _measure_checks(players: int, skus: int, checks: int, rounds: int) -> ChecksResult:
    server = aio.server()
    handler = grpc.stream_stream_rpc_method_handler(
        _SnapshotServer(skus).watch,
        request_deserializer=pb.WatchEntitlementsRequest.FromString,
        response_serializer=pb.WatchEntitlementsResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("entitlements.v1.EntitlementService", {"WatchEntitlements": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ids = [f"bench-cache-player-{i}" for i in range(players)]
    chooser = random.Random(7)
    # Half the pairs name a sku the player holds, half one it does not. The ids and skus are drawn from lists, as
    # a game server passes the ids it holds and its own sku constants (not a new string per check).
    # Sku names as a game server's constants: literals like "sku_001", which Python interns.
    names = [sys.intern(f"sku_{index:03d}") for index in range(2 * skus)]
    pairs = [(chooser.choice(ids), chooser.choice(names)) for _ in range(checks)]
    try:
        async with (
            AsyncEntitlementsClient(f"127.0.0.1:{port}", timeout_s=60) as client,
            client.entitlement_cache(ids) as cache,
        ):
            hits = sum(cache.check(user_id, sku).entitlement is not None for user_id, sku in pairs)
            ready = cache._ready

            def lookups(user_id: str, sku: str) -> object:
                return ready[user_id].get(sku)

            rates: dict[str, list[float]] = {"cache": [], "noop": [], "lookups": []}
            for _ in range(rounds):
                for name, check in (("cache", cache.check), ("noop", _Noop().check), ("lookups", lookups)):
                    await asyncio.sleep(0.05)  # the loop runs: heartbeats arrive, as in a game server
                    started = time.perf_counter()
                    for user_id, sku in pairs:
                        check(user_id, sku)
                    rates[name].append(checks / (time.perf_counter() - started))
    finally:
        await server.stop(None)
    return ChecksResult(
        players=players,
        skus=skus,
        checks_per_round=checks,
        rounds=rounds,
        checks_per_s=round(statistics.median(rates["cache"])),
        best_checks_per_s=round(max(rates["cache"])),
        noop_calls_per_s=round(statistics.median(rates["noop"])),
        lookups_per_s=round(statistics.median(rates["lookups"])),
        hit_ratio=round(hits / checks, 3),
    )


def run_checks(
    *, placement: Placement, workdir: Path, players: int = 1000, skus: int = 20, checks: int = 200_000, rounds: int = 7
) -> ChecksResult:
    """Measures `cache.check` in a child process pinned to the server core (see the module docstring)."""
    child = Child(
        "cache checks",
        [
            sys.executable,
            "-m",
            "bench.cache",
            "checks",
            f"--players={players}",
            f"--skus={skus}",
            f"--checks={checks}",
            f"--rounds={rounds}",
        ],
        cores=placement.server,
        log_path=workdir / "checks.log",
        cwd=ROOT,
    )
    try:
        return ChecksResult(**child.receive(600))
    finally:
        child.stop()


# --- propagation: the watcher processes ---------------------------------------------------------------------------


async def _watch(args: argparse.Namespace) -> None:
    players = [f"bench-cache-player-{i}" for i in range(args.players)]
    # A local subchannel pool gives each client its own connection, as each game server has its own.
    options = [("grpc.use_local_subchannel_pool", 1)]
    clients = [
        AsyncEntitlementsClient(args.target, api_key=os.environ.get(API_KEY_ENV) or None, channel_options=options)
        for _ in range(args.caches)
    ]
    arrivals: list[dict[str, float]] = [{} for _ in clients]
    caches = [client.entitlement_cache(players, timeout_s=60) for client in clients]
    expected = math.inf
    complete = asyncio.Event()

    def check_complete() -> None:
        if all(len(seen) >= expected for seen in arrivals):
            complete.set()

    for cache, seen in zip(caches, arrivals, strict=True):
        _record_arrivals(cache, seen, check_complete)

    try:
        await asyncio.gather(*(cache.start() for cache in caches))
        reader = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        _say({"ready": len(caches)})
        command = json.loads(await reader.readline())
        expected = int(command["expect"])
        check_complete()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(complete.wait(), float(command["within_s"]))
        counters = [dataclasses.asdict(cache.counters) for cache in caches]
        _say({"arrivals": arrivals, "counters": counters})
    finally:
        for cache in caches:
            await cache.close()
        for client in clients:
            await client.close()


def _record_arrivals(cache: Any, seen: dict[str, float], then: Callable[[], None]) -> None:
    """Notes when each change is applied: wraps the cache's own apply step (measurement only)."""
    contents = cache._contents
    apply = contents.apply_change

    def applied(change: pb.EntitlementChange) -> str | None:
        outcome: str | None = apply(change)
        seen.setdefault(f"{change.user_id}|{change.sku}", time.monotonic())
        then()
        return outcome

    contents.apply_change = applied


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


# --- propagation: the grants and the figures ----------------------------------------------------------------------


async def _grant(target: str, api_key: str, players: int, rate_per_s: float, count: int) -> list[list[Any]]:
    """Sends `count` grants at a steady rate; returns [[key, sent_at, answered_at, ok], ...]."""
    results: list[list[Any]] = []
    async with AsyncEntitlementsClient(target, api_key=api_key) as client:
        await client.check_entitlement("bench-cache-warm-up", "x")

        async def one(index: int) -> None:
            user_id, sku = f"bench-cache-player-{index % players}", f"granted-{index}"
            sent_at = time.monotonic()
            outcome = "OK"
            try:
                await client.grant(user_id, sku, idempotency_key=f"bench-cache-{index}")
            except EntitlementsError as exc:
                outcome = exc.code.name if exc.code is not None else type(exc).__name__
            results.append([f"{user_id}|{sku}", sent_at, time.monotonic(), outcome])

        start = time.monotonic() + 0.2
        tasks = []
        for index in range(count):
            delay = start + index / rate_per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index)))
        await asyncio.gather(*tasks)
    return results


def run_propagation(
    *,
    workdir: Path,
    placement: Placement,
    caches: int = 8,
    processes: int = 2,
    players: int = 1000,
    rate_per_s: float = 200.0,
    duration_s: float = 10.0,
    drain_s: float = 10.0,
    log_level: str = "info",
    say: Callable[[str], None] = print,
    cluster: BenchCluster | None = None,
) -> PropagationResult:
    """Measures grant -> every watching cache (see the module docstring); stops everything it started."""
    api_key = secrets.token_urlsafe(24)
    count = round(rate_per_s * duration_s)
    children: list[Child] = []
    try:
        service, endpoints = start_service(
            placement, workdir, api_key, log_level=log_level, name="service (cache)", cluster=cluster
        )
        children.append(service)
        watchers = []
        for index in range(processes):
            share = caches // processes + (1 if index < caches % processes else 0)
            watcher = Child(
                f"cache watcher {index}",
                [
                    sys.executable,
                    "-m",
                    "bench.cache",
                    "watch",
                    f"--target={endpoints.target}",
                    f"--caches={share}",
                    f"--players={players}",
                ],
                cores=placement.load,
                env={**os.environ, API_KEY_ENV: api_key},
                stdin=-1,  # subprocess.PIPE
                log_path=workdir / f"watcher-{index}.log",
                cwd=ROOT,
            )
            children.append(watcher)
            watchers.append(watcher)
        for index, watcher in enumerate(watchers):
            try:
                watcher.receive(120)
            except RuntimeError as exc:
                last = tail(workdir / f"watcher-{index}.log").strip().splitlines()[-1:]
                raise RuntimeError(f"{exc} ({last[0] if last else 'no log'})") from None
        sent = asyncio.run(_grant(endpoints.target, api_key, players, rate_per_s, count))
        granted = sum(1 for *_, outcome in sent if outcome == "OK")
        for watcher in watchers:
            watcher.send({"expect": granted, "within_s": drain_s})
        reports = [watcher.receive(drain_s + 60) for watcher in watchers]
    finally:
        for child in reversed(children):
            child.stop()
    result = _summarize(sent, reports, caches=caches, processes=processes, players=players, rate_per_s=rate_per_s)
    say(
        f"  {result.grants} grants at {rate_per_s:g}/s, {caches} caches: grant answered -> in every cache "
        f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, max {result.max_ms:.1f} ms; {result.missed} missed"
    )
    return result


def _summarize(
    sent: Sequence[Sequence[Any]],
    reports: Sequence[dict[str, Any]],
    *,
    caches: int,
    processes: int,
    players: int,
    rate_per_s: float,
) -> PropagationResult:
    granted = {key: (sent_at, answered_at) for key, sent_at, answered_at, outcome in sent if outcome == "OK"}
    grant_errors = Counter(outcome for *_, outcome in sent if outcome != "OK")
    latencies: list[float] = []
    from_send: list[float] = []
    missed = 0
    counters: list[dict[str, int]] = []
    for report in reports:
        counters.extend(report["counters"])
        for seen in report["arrivals"]:
            for key, (sent_at, answered_at) in granted.items():
                arrived = seen.get(key)
                if arrived is None:
                    missed += 1
                    continue
                latencies.append((arrived - answered_at) * 1000)
                from_send.append((arrived - sent_at) * 1000)
    latencies.sort()
    from_send.sort()
    grant_ms = sorted((answered_at - sent_at) * 1000 for sent_at, answered_at in granted.values())
    return PropagationResult(
        caches=caches,
        processes=processes,
        players=players,
        rate_per_s=rate_per_s,
        grants=len(sent),
        grant_errors=dict(grant_errors),
        arrivals=len(latencies),
        missed=missed,
        p50_ms=round(percentile(latencies, 0.50), 2),
        p99_ms=round(percentile(latencies, 0.99), 2),
        max_ms=round(latencies[-1], 2) if latencies else math.nan,
        from_send_p50_ms=round(percentile(from_send, 0.50), 2),
        from_send_p99_ms=round(percentile(from_send, 0.99), 2),
        grant_p99_ms=round(percentile(grant_ms, 0.99), 2),
        cache_counters=counters,
    )


# --- the part -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CacheResult:
    checks: ChecksResult
    propagation: PropagationResult | None
    #: Why propagation was not measured, when it was not.
    skipped: str | None = None


def run_cache(
    *,
    workdir: Path,
    placement: Placement,
    caches: int = 8,
    rate_per_s: float = 200.0,
    duration_s: float = 10.0,
    log_level: str = "info",
    say: Callable[[str], None] = print,
    cluster: BenchCluster | None = None,
) -> CacheResult:
    """Both measurements of the module docstring."""
    checks = run_checks(placement=placement, workdir=workdir)
    say(
        f"  cache.check: {checks.checks_per_s:,.0f}/s (best round {checks.best_checks_per_s:,.0f}/s), "
        f"a call doing nothing {checks.noop_calls_per_s:,.0f}/s (ratio {checks.ratio:.2f}), the two dictionary "
        f"lookups alone {checks.lookups_per_s:,.0f}/s"
    )
    try:
        propagation = run_propagation(
            workdir=workdir,
            placement=placement,
            caches=caches,
            rate_per_s=rate_per_s,
            duration_s=duration_s,
            log_level=log_level,
            say=say,
            cluster=cluster,
        )
    except RuntimeError as exc:
        say(f"  propagation not measured: {exc}")
        return CacheResult(checks, None, skipped=str(exc))
    return CacheResult(checks, propagation)


def cache_table(result: CacheResult) -> str:
    """The figures next to their goals."""
    checks = result.checks
    header = ("entitlement cache (Python client)", "measured", "goal")
    rows = [
        (
            f"cache.check, {checks.players:,} players x {checks.skus} skus, {checks.hit_ratio:.0%} held",
            f"{checks.checks_per_s:,.0f}/s",
            f">= {GOAL_CHECKS_PER_S:,}/s",
        ),
        ("  a Python call doing nothing, same pairs (baseline)", f"{checks.noop_calls_per_s:,.0f}/s", ""),
        ("  ratio to the baseline", f"{checks.ratio:.2f}", ""),
        ("  the cache's two dictionary lookups alone, same pairs (floor)", f"{checks.lookups_per_s:,.0f}/s", ""),
    ]
    propagation = result.propagation
    if propagation is None:
        rows.append(("grant -> every cache", f"not measured: {result.skipped}", f"p99 <= {GOAL_P99_MS:g} ms"))
    else:
        rows += [
            (
                f"grant answered -> in each of {propagation.caches} caches, {propagation.rate_per_s:g} grants/s",
                f"p50 {propagation.p50_ms:.1f} / p99 {propagation.p99_ms:.1f} / max {propagation.max_ms:.1f} ms",
                f"p99 <= {GOAL_P99_MS:g} ms",
            ),
            (
                "  from the grant's send",
                f"p50 {propagation.from_send_p50_ms:.1f} / p99 {propagation.from_send_p99_ms:.1f} ms",
                "",
            ),
            (
                "  missed (grant, cache) pairs; grant errors",
                f"{propagation.missed}; {sum(propagation.grant_errors.values())} {propagation.grant_errors or ''}",
                "0",
            ),
        ]
    return simple_table(header, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cache", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    checks = commands.add_parser("checks", help="the checks measurement, in this process")
    checks.add_argument("--players", type=int, default=1000)
    checks.add_argument("--skus", type=int, default=20)
    checks.add_argument("--checks", type=int, default=200_000)
    checks.add_argument("--rounds", type=int, default=7)
    watch = commands.add_parser("watch", help="a watcher process (started by the propagation measurement)")
    watch.add_argument("--target", required=True)
    watch.add_argument("--caches", type=int, required=True)
    watch.add_argument("--players", type=int, required=True)
    for command in (parser, commands.add_parser("run", help="both measurements (default)")):
        command.add_argument("--caches", type=int, default=8)
        command.add_argument("--rate", type=float, default=200.0, help="grants per second (default 200)")
        command.add_argument("--duration-s", type=float, default=10.0)
        command.add_argument("--server-core", type=int, default=0)
        command.add_argument("--load-core", type=int, default=1)
    args = parser.parse_args(argv)
    if args.command == "checks":
        result = asyncio.run(_measure_checks(args.players, args.skus, args.checks, args.rounds))
        print(json.dumps(dataclasses.asdict(result)), flush=True)
        return 0
    if args.command == "watch":
        asyncio.run(_watch(args))
        return 0
    placement = Placement.for_cores(args.server_core, args.load_core, None)
    if placement.load is not None:
        os.sched_setaffinity(0, placement.load)
    with signals_interrupt(), tempfile.TemporaryDirectory(prefix="ent-bench-cache-") as tmp:
        outcome = run_cache(
            workdir=Path(tmp), placement=placement, caches=args.caches, rate_per_s=args.rate, duration_s=args.duration_s
        )
    print(cache_table(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
