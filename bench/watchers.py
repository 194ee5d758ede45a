"""Client processes that hold GetOrderStatus streams open, for the stream and latency benchmarks.

A watcher process (`python -m bench.watchers --target ... --orders FILE`) opens one stream per line of its
orders file over a few channels (each its own HTTP/2 connection), and records when every message of every
stream arrived, on `time.monotonic()`: on Linux that is CLOCK_MONOTONIC, one clock shared by every process of
the machine, so the orchestrator can subtract times taken in different processes.

It talks with the orchestrator (`Watchers`) in JSON lines, on its standard input and output:

    watcher -> {"ready": n}                       its n channels are connected
    parent  -> {"open_at": t}                     open every stream at monotonic time t
    watcher -> {"issued": n}                      the calls are started (without --await-first), or
    watcher -> {"opened": n, "errors": {...},     every stream got its first message or failed, or
                "first_message_at": [...]}        --first-timeout-s passed (--await-first); monotonic times
    parent  -> {"finish_within_s": w}             let the streams end by themselves for up to w s, then cancel
    watcher -> {"streams": [[[t, status, source], ...], ...], "errors": {...}}   and it exits

End of input (the orchestrator is gone) cancels every stream and ends the process, as do SIGTERM and SIGINT.
The API key comes from the BENCH_API_KEY environment variable, not argv.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.processes import Child
from entitlements import AsyncEntitlementsClient, AsyncOrderStatusStream
from entitlements.errors import EntitlementsError

API_KEY_ENV = "BENCH_API_KEY"
READY_TIMEOUT_S = 30.0

#: One message as recorded: (monotonic arrival time, OrderStatus number, OrderStatusSource number).
Message = tuple[float, int, int]


def write_orders(path: Path, orders: Sequence[tuple[str, str]]) -> None:
    """Writes the (order id, player id) pairs one watcher opens a stream on, one stream per pair."""
    path.write_text(json.dumps([list(order) for order in orders]))


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _error_name(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    return f"{type(exc).__name__}:{code.name}" if code is not None else type(exc).__name__


class _Streams:
    """The streams of one watcher process, each read to its end by a task of its own."""

    def __init__(self, clients: Sequence[AsyncEntitlementsClient], orders: Sequence[tuple[str, str]]) -> None:
        self._clients = clients
        self._orders = orders
        self.messages: list[list[Message]] = [[] for _ in orders]
        self.errors: dict[int, str] = {}
        self._streams: list[AsyncOrderStatusStream] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._settled = 0  # streams that got a first message or failed
        self.all_settled = asyncio.Event()

    def open(self) -> None:
        loop = asyncio.get_running_loop()
        for index, (order_id, user_id) in enumerate(self._orders):
            stream = self._clients[index % len(self._clients)].get_order_status(order_id, user_id)
            self._streams.append(stream)
            self._tasks.append(loop.create_task(self._follow(index, stream)))
        if not self._orders:
            self.all_settled.set()

    async def _follow(self, index: int, stream: AsyncOrderStatusStream) -> None:
        received = self.messages[index]
        try:
            async for update in stream:
                received.append((time.monotonic(), int(update.status), int(update.source)))
                if len(received) == 1:
                    self._settle()
        except EntitlementsError as exc:
            self.errors[index] = _error_name(exc)
            if not received:
                self._settle()

    def _settle(self) -> None:
        self._settled += 1
        if self._settled == len(self._orders):
            self.all_settled.set()

    async def finish(self, within_s: float) -> None:
        """Waits up to `within_s` for every stream to end by itself, then cancels what is left."""
        if self._tasks and within_s > 0:
            await asyncio.wait(self._tasks, timeout=within_s)
        for stream in self._streams:
            stream.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def first_message_at(self) -> list[float]:
        """When each stream that got a message got its first one (monotonic)."""
        return [received[0][0] for received in self.messages if received]


async def _lines() -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=1 << 20)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _next_command(reader: asyncio.StreamReader) -> dict[str, Any]:
    line = await reader.readline()
    if not line:
        raise EOFError("the orchestrator closed our input")
    command = json.loads(line)
    if not isinstance(command, dict):
        raise ValueError(f"not a command: {line[:200]!r}")
    return command


async def _watch(args: argparse.Namespace, orders: Sequence[tuple[str, str]]) -> None:
    # A local subchannel pool gives each client its own connection (gRPC shares one between identical
    # channels of a process otherwise).
    options = [("grpc.use_local_subchannel_pool", 1)]
    clients = [
        AsyncEntitlementsClient(
            args.target, api_key=os.environ.get(API_KEY_ENV) or None, retry_policy=None, channel_options=options
        )
        for _ in range(args.channels)
    ]
    streams = _Streams(clients, orders)
    try:
        # Connect first: what is measured is a storm of calls, not of TCP and HTTP/2 handshakes.
        await asyncio.gather(*(client.check_entitlement("bench-watcher", "warm-up") for client in clients))
        reader = await _lines()
        _say({"ready": len(clients)})
        command = await _next_command(reader)
        await asyncio.sleep(max(0.0, float(command["open_at"]) - time.monotonic()))
        streams.open()
        if args.await_first:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(args.first_timeout_s):
                    await streams.all_settled.wait()
            firsts = streams.first_message_at()
            # Only the streams that failed before their first message: opening them is what failed.
            errors = Counter(name for index, name in streams.errors.items() if not streams.messages[index])
            missing = len(orders) - len(firsts) - sum(errors.values())
            if missing:
                errors["no first message"] += missing
            _say({"opened": len(orders), "errors": dict(errors), "first_message_at": firsts})
        else:
            _say({"issued": len(orders)})
        command = await _next_command(reader)
        await streams.finish(float(command["finish_within_s"]))
        _say({"streams": streams.messages, "errors": dict(Counter(streams.errors.values()))})
    finally:
        await streams.finish(0)
        for client in clients:
            await client.close()


async def _main(args: argparse.Namespace, orders: Sequence[tuple[str, str]]) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError, EOFError):
        await _watch(args, orders)


class Watchers:
    """Watcher processes on the load core, holding streams on the service for the orchestrator.

    Args:
        target: the service's `host:port`.
        api_key: sent with every call.
        orders: one (order id, player id) per stream; dealt round-robin to the processes.
        processes: how many watcher processes.
        channels: connections per process.
        cores: where the processes run.
        workdir: holds their orders files and logs.
        await_first: True when every stream is expected to get a first message at once (a stored order).
        first_timeout_s: with `await_first`, how long a process waits for them.
    """

    def __init__(
        self,
        *,
        target: str,
        api_key: str,
        orders: Sequence[tuple[str, str]],
        processes: int,
        channels: int,
        cores: Sequence[int] | None,
        workdir: Path,
        await_first: bool,
        first_timeout_s: float = 60.0,
    ) -> None:
        self.children: list[Child] = []
        self._await_first = await_first
        self._first_timeout_s = first_timeout_s
        self.shares = [list(orders[number::processes]) for number in range(processes)]
        env = {**os.environ, API_KEY_ENV: api_key}
        try:
            for number, share in enumerate(self.shares):
                orders_file = workdir / f"watcher-{number}.json"
                write_orders(orders_file, share)
                argv = [
                    sys.executable,
                    "-m",
                    "bench.watchers",
                    f"--target={target}",
                    f"--orders={orders_file}",
                    f"--channels={channels}",
                    f"--first-timeout-s={first_timeout_s!r}",
                    *(["--await-first"] if await_first else []),
                ]
                self.children.append(
                    Child(
                        f"stream watcher {number}",
                        argv,
                        cores=cores,
                        env=env,
                        stdin=subprocess.PIPE,
                        log_path=workdir / f"watcher-{number}.log",
                    )
                )
            for child in self.children:
                child.receive(READY_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise

    def open(self, start_margin_s: float = 0.5) -> tuple[float, list[dict[str, Any]]]:
        """Has every process open its streams at the same instant; returns that instant and their answers.

        With `await_first`, the answers come once every stream got its first message (or failed); otherwise
        as soon as the calls are started.
        """
        open_at = time.monotonic() + start_margin_s
        for child in self.children:
            child.send({"open_at": open_at})
        timeout_s = start_margin_s + (self._first_timeout_s if self._await_first else 0) + 30
        return open_at, [child.receive(timeout_s) for child in self.children]

    def finish(self, within_s: float) -> list[dict[str, Any]]:
        """Lets the streams end by themselves for up to `within_s`, cancels the rest, and collects every
        process's record (`streams`: the messages of each stream, in the order of `shares`)."""
        for child in self.children:
            child.send({"finish_within_s": within_s})
        return [child.receive(within_s + 30) for child in self.children]

    def stop(self) -> None:
        for child in self.children:
            child.stop(grace_s=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.watchers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--orders", required=True, help="JSON file: [[order id, player id], ...]")
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--await-first", action="store_true")
    parser.add_argument("--first-timeout-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    orders = [(str(order), str(user)) for order, user in json.loads(Path(args.orders).read_text())]
    asyncio.run(_main(args, orders))
    return 0


if __name__ == "__main__":
    sys.exit(main())
