"""A player with a long history: ListEntitlements and ListSubscriptions for a player holding 20,000 expired items,
and what a concurrent caller sees meanwhile.

The service runs alone on the server core (`python -m server`, its Valkey on the load core). The benchmark grants
the hoarder 20,000 passes of 1 ms through Grant (so they are written as the service writes them, and expire at
once), then three items in force whose skus sort after every pass (`zz_*`): a listing of active items must get
past the whole history to find them. A second player gets the same data written directly in the layout of the
store before its read indexes (items hash and `skus` only), for the one-time cost of indexing such a player.

While the listings run, a ticker on its own connection calls CheckEntitlement back to back (with a 2 ms pause):
its latency is what any other caller of the service sees, so a listing that holds the service's event loop shows
up as the ticker's maximum. Each scenario also counts the Redis commands it caused (INFO commandstats of the
service's Valkey; the service's background work adds a few).

Scenarios, in this order (each runs `calls` times, or as many as fit in `budget_s`):

- the first walk: ListEntitlements(page_size=1) page after page until one holds an item (the first listing
  after the passes expired);
- ListEntitlements(page_size=1), first page, repeated;
- ListSubscriptions (limit 15) of what is in force, then with include_inactive;
- the first ListEntitlements(page_size=1) of the player in the old layout (one call).

`--server-root PATH` runs the service of another checkout (e.g. `git archive <commit>` extracted) with this
virtualenv, for a before/after comparison; `python -m bench --only history --history-root PATH` does the same.

    python -m bench.history [--items 20000] [--calls 20] [--budget-s 30] [--server-root PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.processes import signals_interrupt
from bench.report import simple_table
from bench.servers import BENCH_PROJECT, Placement, start_service, tail
from core.keys import UserKeys
from entitlements import AsyncEntitlementsClient

HOARDER = "bench-hoarder"
LEGACY = "bench-legacy"
TICKER_USER = "bench-ticker"
#: Items in force, after every expired pass in sku order.
LIVE = ("zz_gold", "zz_season", "zz_vip")
DAY_MS = 86_400_000
TICKER_PAUSE_S = 0.002


@dataclass(frozen=True)
class Scenario:
    """One scenario's calls, their latency, the Redis commands per call, and the ticker's latency meanwhile."""

    name: str
    calls: int
    p50_ms: float
    max_ms: float
    commands_per_call: float
    ticker_p99_ms: float
    ticker_max_ms: float


@dataclass
class HistoryResult:
    """What the history part measured."""

    items: int
    server_root: str
    seed_s: float
    ticker_idle_p50_ms: float
    ticker_idle_max_ms: float
    first_walk_pages: int
    scenarios: list[Scenario] = field(default_factory=list)


class Ticker:
    """CheckEntitlement back to back on its own connection; remembers when each call started and how long it took."""

    def __init__(self, client: AsyncEntitlementsClient) -> None:
        self._client = client
        self.samples: list[tuple[float, float]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await self._client.check_entitlement(TICKER_USER, "gold")
            self.samples.append((started, time.perf_counter() - started))
            await asyncio.sleep(TICKER_PAUSE_S)

    def between(self, start: float, end: float) -> list[float]:
        """The latencies (ms) of the calls that started in [start, end]."""
        return [latency * 1000 for at, latency in self.samples if start <= at <= end]


def _p(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _commands(redis: aioredis.Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for name, v in stats.items() if name != "cmdstat_info")


async def _seed(client: AsyncEntitlementsClient, redis: aioredis.Redis, items: int) -> None:
    one_ms = timedelta(milliseconds=1)
    for start in range(0, items, 64):
        await asyncio.gather(
            *(
                client.grant(HOARDER, f"pass_{i:05d}", duration=one_ms, idempotency_key=f"h{i}")
                for i in range(start, min(items, start + 64))
            )
        )
    await client.grant(HOARDER, "zz_gold", quantity=5)
    for sku in LIVE[1:]:
        await client.grant(HOARDER, sku, duration=timedelta(days=30))
    await client.grant(TICKER_USER, "gold")
    # The same history for LEGACY, written as the store wrote it before the read indexes existed.
    now = time.time_ns() // 1_000_000
    keys = UserKeys(BENCH_PROJECT, LEGACY)
    records: dict[Any, Any] = {
        f"pass_{i:05d}": json.dumps(
            {"k": 3, "q": 1, "g": now - DAY_MS + i, "u": now - DAY_MS + i, "e": now - i - 1, "p": DAY_MS}
        )
        for i in range(items)
    }
    records |= {sku: json.dumps({"k": 1, "q": 5, "g": now, "u": now}) for sku in LIVE}
    pairs = list(records.items())
    async with redis.pipeline(transaction=False) as pipe:
        for start in range(0, len(pairs), 1000):
            chunk = dict(pairs[start : start + 1000])
            pipe.hset(keys.items, mapping=chunk)
            pipe.zadd(keys.skus, dict.fromkeys(chunk, 0))
        await pipe.execute()
    await asyncio.sleep(0.05)  # every 1 ms pass has expired


async def _scenario(
    name: str,
    call: Callable[[], Awaitable[object]],
    *,
    calls: int,
    budget_s: float,
    ticker: Ticker,
    redis: aioredis.Redis,
) -> Scenario:
    latencies: list[float] = []
    before = await _commands(redis)
    started = time.perf_counter()
    while len(latencies) < calls and (not latencies or time.perf_counter() - started < budget_s):
        at = time.perf_counter()
        await call()
        latencies.append((time.perf_counter() - at) * 1000)
    ended = time.perf_counter()
    commands = await _commands(redis) - before
    during = ticker.between(started, ended)
    return Scenario(
        name=name,
        calls=len(latencies),
        p50_ms=statistics.median(latencies),
        max_ms=max(latencies),
        commands_per_call=commands / len(latencies),
        ticker_p99_ms=_p(during, 0.99),
        ticker_max_ms=max(during, default=0.0),
    )


async def _measure(
    target: str, socket: Path, api_key: str, *, items: int, calls: int, budget_s: float, root: str, say: Any
) -> HistoryResult:
    redis = aioredis.Redis(unix_socket_path=str(socket))
    client = AsyncEntitlementsClient(target, api_key=api_key, timeout_s=120.0)
    ticker_client = AsyncEntitlementsClient(target, api_key=api_key, timeout_s=30.0)
    ticker = Ticker(ticker_client)
    try:
        seed_started = time.perf_counter()
        await _seed(client, redis, items)
        seed_s = time.perf_counter() - seed_started
        say(f"  seeded {items:,} expired passes in {seed_s:.1f} s")
        ticker.start()
        await asyncio.sleep(1.0)
        idle = ticker.between(0.0, time.perf_counter())
        pages = 0

        async def first_walk() -> None:
            nonlocal pages
            token = ""
            while True:
                page = await client.list_entitlements(HOARDER, page_size=1, page_token=token)
                pages += 1
                if page.entitlements or not page.next_page_token:
                    return
                token = page.next_page_token

        result = HistoryResult(
            items=items,
            server_root=root,
            seed_s=round(seed_s, 1),
            ticker_idle_p50_ms=round(_p(idle, 0.5), 3),
            ticker_idle_max_ms=round(max(idle, default=0.0), 3),
            first_walk_pages=0,
        )
        runs: list[tuple[str, Callable[[], Awaitable[object]], int]] = [
            ("ListEntitlements(page_size=1): first walk to an item", first_walk, 1),
            (
                "ListEntitlements(page_size=1), first page",
                lambda: client.list_entitlements(HOARDER, page_size=1),
                calls,
            ),
            ("ListSubscriptions(limit=15)", lambda: client.list_subscriptions(HOARDER), calls),
            (
                "ListSubscriptions(limit=15, include_inactive)",
                lambda: client.list_subscriptions(HOARDER, include_inactive=True),
                calls,
            ),
            (
                "first ListEntitlements(page_size=1) of an old-layout player",
                lambda: client.list_entitlements(LEGACY, page_size=1),
                1,
            ),
        ]
        for name, call, count in runs:
            scenario = await _scenario(name, call, calls=count, budget_s=budget_s, ticker=ticker, redis=redis)
            result.scenarios.append(scenario)
            say(
                f"  {name}: {scenario.calls} calls, p50 {scenario.p50_ms:.1f} ms, max {scenario.max_ms:.1f} ms, "
                f"{scenario.commands_per_call:,.0f} Redis commands/call, ticker max {scenario.ticker_max_ms:.1f} ms"
            )
        result.first_walk_pages = pages
        return result
    finally:
        await ticker.stop()
        await client.close()
        await ticker_client.close()
        await redis.aclose()


def run_history(
    *,
    workdir: Path,
    placement: Placement,
    items: int = 20_000,
    calls: int = 20,
    budget_s: float = 30.0,
    server_root: Path | None = None,
    log_level: str = "info",
    say: Callable[[str], None] = print,
) -> HistoryResult:
    """Measures the listings of a player with `items` expired items (see the module docstring); stops the
    service it started."""
    workdir.mkdir(parents=True, exist_ok=True)
    api_key = secrets.token_urlsafe(24)
    child, endpoints = start_service(
        placement, workdir, api_key, log_level=log_level, root=server_root, name="service (history)"
    )
    try:
        return asyncio.run(
            _measure(
                endpoints.target,
                endpoints.redis_socket,
                api_key,
                items=items,
                calls=calls,
                budget_s=budget_s,
                root=str(server_root or "this tree"),
                say=say,
            )
        )
    except BaseException:
        say(f"--- last lines of service.log ---\n{tail(workdir / 'service.log')}")
        raise
    finally:
        child.stop()


def history_table(result: HistoryResult) -> str:
    """The scenarios, and the ticker's latency when idle."""
    header = ("scenario", "calls", "p50 ms", "max ms", "Redis cmds/call", "ticker p99 ms", "ticker max ms")
    rows = [
        (
            f"ticker alone (CheckEntitlement, {result.items:,} expired items held by another player)",
            "",
            "",
            "",
            "",
            f"{result.ticker_idle_p50_ms:.2f} (p50)",
            f"{result.ticker_idle_max_ms:.1f}",
        )
    ]
    for s in result.scenarios:
        rows.append(
            (
                s.name,
                str(s.calls),
                f"{s.p50_ms:.1f}",
                f"{s.max_ms:.1f}",
                f"{s.commands_per_call:,.0f}",
                f"{s.ticker_p99_ms:.1f}",
                f"{s.ticker_max_ms:.1f}",
            )
        )
    return simple_table(header, rows) + f"\n(first walk: {result.first_walk_pages} pages; server: {result.server_root})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000, help="expired items of the player (default 20000)")
    parser.add_argument("--calls", type=int, default=20, help="calls per repeated scenario (default 20)")
    parser.add_argument("--budget-s", type=float, default=30.0, help="time cap per scenario (default 30)")
    parser.add_argument("--server-root", type=Path, default=None, help="another checkout's service to measure")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    placement = Placement.for_cores(args.server_core, args.load_core, None)
    if placement.load is not None:
        os.sched_setaffinity(0, placement.load)
    with signals_interrupt(), tempfile.TemporaryDirectory(prefix="ent-bench-history-") as tmp:
        result = run_history(
            workdir=Path(tmp),
            placement=placement,
            items=args.items,
            calls=args.calls,
            budget_s=args.budget_s,
            server_root=args.server_root,
        )
    print(history_table(result))
    if args.output is not None:
        args.output.write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
