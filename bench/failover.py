"""A primary of the Redis Cluster killed under load: what the callers see, and whether anything is lost or doubled.

The setup (`bench.stack`): a local cluster of 3 primaries with 1 replica each (`tools.cluster.LocalCluster`,
`cluster-node-timeout` 1 s), 2 service replicas and 2 gateways as processes on it, 6 event partitions, the
gateways' `GATEWAY_DURABILITY=replicas` (a 204 only once a replica holds the event). The traffic
(`bench.traffic`), all at once: webhooks (each order delivered twice at once through both gateways, every copy
sent again after anything but a 204, as Xsolla does), Grant calls (each retried with its idempotency key after a
retryable error, every 4th replayed on the other replica), CheckEntitlement calls, and GetOrderStatus streams on
both replicas for a sample of the orders.

After `before_kill_s`, the primary that holds event partition 0 (and the slots of about a third of the players)
is killed with SIGKILL; its replica is promoted (`LocalCluster.wait_failover_async`). The traffic goes on for
`after_failover_s`, then stops taking new work; whatever is still failing keeps being retried until it succeeds.
Once every acknowledged order is applied, the store is compared with what the callers were told
(`bench.outcome`). No process is restarted at any point.

Figures: acknowledged, applied, lost, doubled (orders and grants), per kind of caller the failures after the kill,
the seconds from the first failure to the last (`unavailable_s`) and from the kill to the first success after the
last failure (`recovered_after_s`), the failover itself (kill -> the replica serves), and how long the consumers
took to apply everything once the traffic stopped.

`run_failover()` is what `python -m bench --only failover` calls (one fresh cluster per run); the tests call
`run_scenario()` on a cluster of their own. `python -m bench.failover` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.outcome import Outcome, applied_orders, judge
from bench.processes import signals_interrupt
from bench.report import simple_table
from bench.stack import Stack, StackSettings
from bench.traffic import Checks, Grants, Order, OrderStreams, Tally, Webhooks, player_of
from core.connections import connect
from core.keys import EventKeys, order_status_channel
from entitlements import AsyncEntitlementsClient
from tools.cluster import LocalCluster, Node

FIRST_ORDER = 900_000_000


@dataclasses.dataclass(frozen=True)
class Scenario:
    """The traffic of one run.

    Attributes:
        players: the players the orders and grants are spread over.
        orders, grants: a fixed number of each (the run without a kill); None: as many as the load sends until
            the traffic stops.
        kill: kill the primary of partition 0 after `before_kill_s`; the traffic stops `after_failover_s` after
            its replica took over (or, without a kill, once the fixed numbers are sent).
        webhook_workers, grant_workers, check_workers: requests in flight of each kind.
        streamed_orders: orders followed by a GetOrderStatus stream on every replica.
        restart_killed_after_s: start the killed node again this long after its replica took over (as its
            supervisor would); it rejoins as the new primary's replica. None: it stays down.
        give_up_s: how long a webhook copy or a grant is retried before it is given up (counted in `given_up`).
        settle_timeout_s: how long the consumers may take to apply every acknowledged order at the end.
    """

    players: int = 150
    orders: int | None = None
    grants: int | None = None
    kill: bool = True
    before_kill_s: float = 3.0
    after_failover_s: float = 3.0
    webhook_workers: int = 8
    grant_workers: int = 4
    check_workers: int = 2
    streamed_orders: int = 12
    restart_killed_after_s: float | None = None
    give_up_s: float = 120.0
    settle_timeout_s: float = 60.0


@dataclasses.dataclass
class FailoverResult:
    """One run's figures (see the module docstring)."""

    durability: str
    replicas_per_primary: int
    killed: dict[str, Any] | None
    outcome: Outcome
    answers: dict[str, dict[str, int]]
    outages: dict[str, dict[str, Any]]
    streams: dict[str, Any]
    given_up: dict[str, int]
    bad_replays: int
    settle_s: float
    load_s: float
    exited: list[str]
    traceback_lines: dict[str, int]
    first_tracebacks: list[str]

    @property
    def unexpected(self) -> dict[str, dict[str, int]]:
        """Per kind, answers that are neither a success nor retryable (500, UNKNOWN, INTERNAL ...)."""
        found = {kind: {a: n for a, n in seen.items() if a not in _EXPECTED} for kind, seen in self.answers.items()}
        return {kind: seen for kind, seen in found.items() if seen}


_EXPECTED = frozenset({"204", "503", "connection", "OK", "replayed", "UNAVAILABLE", "DEADLINE_EXCEEDED"})


async def run_scenario(
    cluster: LocalCluster, workdir: Path, stack_settings: StackSettings | None = None, scenario: Scenario | None = None
) -> FailoverResult:
    """Starts the processes on `cluster`, sends the traffic (killing a primary if asked), waits until everything
    acknowledged is applied, judges the store, stops the processes."""
    scenario = scenario or Scenario()
    stack = Stack(cluster.url, workdir, stack_settings)
    await stack.start()
    clients = [
        AsyncEntitlementsClient(process.address, api_key=stack.api_key, retry_policy=None, timeout_s=5.0)
        for process in stack.services
    ]
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10.0)) as http:
            return await _run(cluster, stack, clients, http, scenario)
    finally:
        for client in clients:
            await client.close()
        stack.stop()


async def _run(
    cluster: LocalCluster,
    stack: Stack,
    clients: list[AsyncEntitlementsClient],
    http: aiohttp.ClientSession,
    scenario: Scenario,
) -> FailoverResult:
    project = stack.project_id
    urls = [f"{g.address}/webhooks/xsolla" for g in stack.gateways]
    webhooks = Webhooks(urls, stack.secret, project, http, give_up_s=scenario.give_up_s)
    grants = Grants(clients, run_id=secrets.token_hex(4), give_up_s=scenario.give_up_s)
    checks = Checks(clients, scenario.players)
    streams = OrderStreams(clients, give_up_s=scenario.give_up_s)
    sent: dict[int, Order] = {}

    def order(number: int) -> Order:
        return sent.setdefault(number, Order(FIRST_ORDER + number, player_of(number, scenario.players)))

    # Streams opened before their orders are sent: the first orders of the run, and (below) the next orders the
    # load will send at the moment of the kill, so that those see their order applied across the failover.
    stream_tasks: list[asyncio.Task[Any]] = []
    followed: list[Order] = []

    def follow(numbers: range) -> None:
        for number in numbers:
            followed.append(order(number))
            for replica in range(len(clients)):
                stream_tasks.append(asyncio.create_task(streams.follow(order(number), replica)))

    first = scenario.streamed_orders // 2 if scenario.kill else scenario.streamed_orders
    follow(range(0, 3 * first, 3))
    stop = asyncio.Event()
    started = time.monotonic()

    def deliver(number: int) -> Awaitable[None]:
        return webhooks.deliver(order(number))

    def grant(number: int) -> Awaitable[None]:
        return grants.grant(grants.call(number, scenario.players))

    load = [
        asyncio.create_task(_workers(scenario.webhook_workers, stop, scenario.orders, deliver)),
        asyncio.create_task(_workers(scenario.grant_workers, stop, scenario.grants, grant)),
    ]
    checking = asyncio.create_task(_workers(scenario.check_workers, stop, None, lambda _: checks.check_one()))
    killed: dict[str, Any] | None = None
    kill_at = started
    if scenario.kill:
        await asyncio.sleep(scenario.before_kill_s)
        # Far enough ahead that their streams are open before the webhooks come (about 2 s at the usual rate).
        ahead = max(sent) + 16 * scenario.webhook_workers
        follow(range(ahead, ahead + 3 * (scenario.streamed_orders - first), 3))
        victim, killed, kill_at = await _kill_partition_primary(cluster, project, stack.settings.partitions)
        if scenario.restart_killed_after_s is not None:
            await asyncio.sleep(scenario.restart_killed_after_s)
            killed["restarted_after_s"] = round(time.monotonic() - kill_at, 3)
            await asyncio.to_thread(cluster.restart, victim)
        await asyncio.sleep(scenario.after_failover_s)
        stop.set()
    await asyncio.gather(*load)
    stop.set()
    await checking
    load_s = time.monotonic() - started
    # Orders followed by a stream that the load did not reach: delivered now, so that every stream can end.
    await asyncio.gather(*(webhooks.deliver(o) for o in followed if o not in webhooks.acknowledged))

    settle_started = time.monotonic()
    redis = connect(cluster.url, cluster=True, timeout_s=5.0, max_connections=16)
    try:
        deadline = settle_started + scenario.settle_timeout_s
        while time.monotonic() < deadline:
            if webhooks.acknowledged <= await applied_orders(redis, project, webhooks.acknowledged):
                break
            await asyncio.sleep(0.25)
        settle_s = time.monotonic() - settle_started
        async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
            await asyncio.gather(*stream_tasks, return_exceptions=True)
        outcome = await judge(
            redis,
            project,
            sent=list(sent.values()),
            acknowledged=webhooks.acknowledged,
            grants=list(grants.granted.values()),
            clients=clients,
        )
    finally:
        await redis.aclose()
    tallies: list[Tally] = [webhooks.tally, grants.tally, checks.tally, streams.tally]
    errors = stack.traceback_lines()
    return FailoverResult(
        durability=stack.settings.durability,
        replicas_per_primary=cluster.replicas,
        killed=killed,
        outcome=outcome,
        answers={t.kind: dict(sorted(t.answers.items())) for t in tallies},
        outages={t.kind: t.outage(kill_at) for t in tallies} if killed else {},
        streams={
            "streams": len(streams.records),
            "done": sum(r.done for r in streams.records),
            "reopened": sum(r.reopened for r in streams.records),
            "errors": dict(sum((r.errors for r in streams.records), start=Counter())),
            "not_done": [f"{r.order.number}@{r.replica}: {r.statuses}" for r in streams.records if not r.done][:10],
        },
        given_up={"webhooks": len(webhooks.given_up), "grants": len(grants.given_up)},
        bad_replays=len(grants.bad_replays),
        settle_s=round(settle_s, 3),
        load_s=round(load_s, 3),
        exited=[p.name for p in stack.processes if not p.running],
        traceback_lines={name: len(lines) for name, lines in errors.items()},
        first_tracebacks=[line[:1500] for lines in errors.values() for line in lines][:5],
    )


async def _workers(count: int, stop: asyncio.Event, limit: int | None, job: Callable[[int], Awaitable[None]]) -> None:
    """`count` tasks running `job(n)` for n = 0, 1, ... (each n once) until `stop` is set or `limit` is reached;
    a job under way when `stop` is set finishes (with its retries)."""
    numbers = itertools.count()

    async def work() -> None:
        while not stop.is_set():
            number = next(numbers)
            if limit is not None and number >= limit:
                return
            await job(number)

    await asyncio.gather(*(work() for _ in range(count)))


async def _kill_partition_primary(
    cluster: LocalCluster, project: int, partitions: int
) -> tuple[Node, dict[str, Any], float]:
    """Kills (SIGKILL) a primary holding event partitions (the one holding the project's order-status channel too,
    when it holds a partition), then waits for its replica to take over."""
    streams = [EventKeys(project, p).stream for p in range(partitions)]
    owners = await asyncio.to_thread(lambda: [cluster.primary_for(s).port for s in streams])
    channel = (await asyncio.to_thread(cluster.primary_for, order_status_channel(project))).port
    victim = next(node for node in cluster.nodes if node.port == (channel if channel in owners else owners[0]))
    kill_at = time.monotonic()
    await asyncio.to_thread(cluster.kill, victim)
    promoted = await cluster.wait_failover_async(victim)
    return (
        victim,
        {
            "node": victim.address,
            "partitions": [p for p, port in enumerate(owners) if port == victim.port],
            "order_status_channel": victim.port == channel,
            "promoted": promoted.address,
            "failover_s": round(time.monotonic() - kill_at, 3),
        },
        kill_at,
    )


# --- the benchmark part -------------------------------------------------------------------------------------------


def run_failover(
    *,
    workdir: Path,
    runs: int = 3,
    replicas: int = 2,
    durability: str = "replicas",
    say: Callable[[str], None] = print,
) -> list[FailoverResult]:
    """`runs` runs, each on a fresh local cluster (started here, on the calling thread, which must be the main one)
    of 3 primaries with `replicas` replicas each. With one replica, the killed node is started again 5 s after the
    failover (the promoted primary has no replica until then)."""
    scenario = Scenario(restart_killed_after_s=5.0 if replicas == 1 else None)
    results = []
    for number in range(runs):
        cluster = LocalCluster(workdir / f"cluster-{number}", replicas=replicas)
        cluster.start()
        try:
            result = asyncio.run(
                run_scenario(cluster, workdir / f"processes-{number}", StackSettings(durability=durability), scenario)
            )
        finally:
            cluster.stop()
        say(f"  run {number + 1}: {summary(result)}")
        results.append(result)
    return results


def summary(result: FailoverResult) -> str:
    o = result.outcome
    outages = ", ".join(
        f"{kind} {figures['unavailable_s']:.2f} s ({figures['failures']} failures, recovered "
        f"{figures['recovered_after_s']} s after the kill)"
        for kind, figures in result.outages.items()
    )
    killed = result.killed or {}
    return (
        f"failover {killed.get('failover_s')} s; webhooks acknowledged {o.acknowledged}, applied {o.applied}, "
        f"lost {o.lost}, doubled {o.doubled}; grants ok {o.grants_ok}, lost {o.grants_lost}, doubled "
        f"{o.grants_doubled}; unavailable: {outages}"
    )


def failover_table(results: Sequence[FailoverResult]) -> str:
    """One row per run: the failover, what was acknowledged and applied, what each kind of caller saw."""
    header = ("run", "failover s", "acked", "applied", "lost", "doubled", "grants ok", "g lost", "g doubled",
              "webhook 503 s", "grant UNAV s", "check UNAV s", "recovered s", "settle s")  # fmt: skip
    rows = []
    for number, r in enumerate(results, start=1):
        o, out = r.outcome, r.outages
        recovered = max((f["recovered_after_s"] or 0.0) for f in out.values()) if out else 0.0
        rows.append(
            (
                str(number),
                f"{(r.killed or {}).get('failover_s', 0):.2f}",
                str(o.acknowledged),
                str(o.applied),
                str(o.lost),
                str(o.doubled),
                str(o.grants_ok),
                str(o.grants_lost),
                str(o.grants_doubled),
                *(f"{out.get(kind, {}).get('unavailable_s', 0.0):.2f}" for kind in ("webhook", "grant", "check")),
                f"{recovered:.2f}",
                f"{r.settle_s:.2f}",
            )
        )
    first = results[0] if results else None
    title = "a primary killed under load" + (
        f", {first.replicas_per_primary} replica(s) per primary, GATEWAY_DURABILITY={first.durability}" if first else ""
    )
    return title + "\n" + simple_table(header, rows)


def document(results: Sequence[FailoverResult]) -> list[dict[str, Any]]:
    """The runs for the JSON results file."""
    return [{**dataclasses.asdict(r), "unexpected": r.unexpected} for r in results]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--replicas", type=int, choices=(1, 2), default=2, help="replicas per primary")
    parser.add_argument("--durability", choices=("replicas", "none"), default="replicas")
    parser.add_argument("--output", type=Path, default=None, help="write the runs to this JSON file")
    args = parser.parse_args(argv)
    with signals_interrupt(), tempfile.TemporaryDirectory(prefix="ent-bench-failover-") as tmp:
        results = run_failover(workdir=Path(tmp), runs=args.runs, replicas=args.replicas, durability=args.durability)
    print(failover_table(results))
    if args.output is not None:
        args.output.write_text(json.dumps(document(results), indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
