"""The CPU of the store's two costliest calls, in one process: Grant's write and CheckEntitlements' read and answer.

On a loaded machine the `core` part's ratios move by more than a change of a few hundred µs per call (the server
core is shared with whatever else runs). This measures the store's part of each call alone, with
`time.process_time`, on a private Valkey (`appendfsync always`, pinned away from this process), in two ways in the
same process:

- `pipelined`: as the service runs on a single server: the write scripts and their durability wait on the store's
  pipelined write connections, CheckEntitlements' script on its pipelined read connection
  (`server.store.pipelined`);
- `redis-py`: the same store with those two paths through redis-py instead (a pipeline per write, the script
  object per read), as a Redis Cluster, TLS or RESP3 client runs them.

Each round alternates the two, `calls` calls each, 32 in flight: `EntitlementStore.grant` (a new idempotency key
per call, `local` durability: each write waits for WAITAOF), then `get_many` of 100 pairs with the response built
and serialized as CheckEntitlements does (`server.service.check_responses`).

`python -m bench.store_paths [--calls 2000] [--rounds 3] [--core 0] [--valkey-core 1]` prints one line per
measurement and the medians as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from core.connections import connect
from core.durability import Durability
from server.embedded import EmbeddedRedis
from server.service import check_responses
from server.store import EntitlementStore, GrantCommand

PROJECT = 7
PAIRS = 100
IN_FLIGHT = 32


def _through_redis_py(store: EntitlementStore) -> EntitlementStore:
    """`store` with its writes and its pairs' script sent through redis-py (what a cluster client does)."""
    store._writer._pipelined = None  # the bench compares the two paths of one store
    store._reads_by = None
    return store


async def _cpu_per_call(calls: int, call: Callable[[int], Awaitable[object]]) -> float:
    """µs of this process's CPU per call, `calls` calls with `IN_FLIGHT` at a time."""
    limit = asyncio.Semaphore(IN_FLIGHT)

    async def one(n: int) -> None:
        async with limit:
            await call(n)

    started = time.process_time()
    await asyncio.gather(*(one(n) for n in range(calls)))
    return (time.process_time() - started) / calls * 1e6


async def measure(calls: int, rounds: int, valkey_core: int | None) -> dict[str, dict[str, float]]:
    """The median µs of CPU per call of each path and call, over `rounds` alternating rounds."""
    samples: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="store-paths-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis", appendfsync="always")
        await server.start()
        try:
            if valkey_core is not None and server.pid is not None:
                os.sched_setaffinity(server.pid, {valkey_core})
            client = connect(server.url, cluster=False, timeout_s=5.0, max_connections=64)
            durable = Durability("local", timeout_ms=2000, reason="bench")
            stores = {
                name: EntitlementStore(client, timeout_s=5.0, idempotency_ttl_ms=600_000, durability=durable)
                for name in ("pipelined", "redis-py")
            }
            _through_redis_py(stores["redis-py"])
            pairs = [(f"p{i}", "gold") for i in range(PAIRS)]
            for name, store in stores.items():  # the players exist; both paths warmed up
                for n in range(PAIRS):
                    await store.grant(GrantCommand(PROJECT, f"p{n}", "gold", 0, 1, 0, f"warm-{name}-{n}"), "bench")
                await store.get_many(PROJECT, pairs)
            for round_number in range(rounds):
                for name, store in stores.items():

                    async def grant(
                        n: int, store: EntitlementStore = store, key: str = f"{name}-{round_number}"
                    ) -> None:
                        command = GrantCommand(PROJECT, f"p{n % 1000}", "gold", 0, 1, 0, f"{key}-{n}")
                        await store.grant(command, "bench")

                    async def check(n: int, store: EntitlementStore = store) -> None:
                        stored = await store.get_many(PROJECT, pairs)
                        check_responses(pairs, stored, 1_767_225_600_000).SerializeToString()

                    figures = samples.setdefault(name, {"grant": [], "check_100": []})
                    figures["grant"].append(await _cpu_per_call(calls, grant))
                    figures["check_100"].append(await _cpu_per_call(max(1, calls // 4), check))
                    print(
                        f"round {round_number + 1} {name}: Grant's write {figures['grant'][-1]:.0f} µs, "
                        f"CheckEntitlements of {PAIRS} {figures['check_100'][-1]:.0f} µs "
                        f"({figures['check_100'][-1] / PAIRS:.1f} per check)",
                        flush=True,
                    )
            await client.aclose()
        finally:
            await server.stop()
    return {
        name: {call: statistics.median(values) for call, values in figures.items()} for name, figures in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.store_paths", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="Grants per measurement (a quarter as many checks)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both paths (default 3)")
    parser.add_argument("--core", type=int, default=0, help="the core this process runs on (default 0)")
    parser.add_argument("--valkey-core", type=int, default=1, help="the core of its Valkey (default 1)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.core})
    medians = asyncio.run(measure(args.calls, args.rounds, args.valkey_core))
    print(json.dumps({"cpu_us_per_call_median": medians}, indent=2))


if __name__ == "__main__":
    main()
