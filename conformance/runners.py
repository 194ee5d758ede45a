"""A client's conformance runner as a process: requests in, answers and stream events out (PROTOCOL.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: Every client the suite runs, in the order it runs them; python is the reference the others are compared to.
CLIENTS = ("python", "go", "typescript", "cpp", "http")


class RunnerError(AssertionError):
    """The runner broke the protocol: it did not start, died, wrote something that is not a protocol line."""


def runner_path(client: str) -> Path:
    return ROOT / "clients" / client / "conformance-runner"


class RunnerProcess:
    """One client's runner. `call()` sends a request and returns its final line; `events` collects the stream
    events of the request in flight, and `wait_events(n)` waits until there are n of them."""

    def __init__(self, client: str, log_file: Path) -> None:
        self.client = client
        self.events: list[dict[str, Any]] = []
        #: Set when a request was abandoned mid-way: the process must be replaced before the next one.
        self.broken = False
        self._log_file = log_file
        self._process: asyncio.subprocess.Process | None = None
        self._next_id = 0
        self._arrived = asyncio.Condition()

    async def start(self, timeout_s: float = 60.0) -> None:
        path = runner_path(self.client)
        if not path.exists():
            raise RunnerError(f"{path} does not exist")
        with self._log_file.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                str(path),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                limit=1 << 24,
            )
        line = await self._read_line(timeout_s)
        if line.get("ready") is not True:
            raise RunnerError(f"{self.client} runner's first line is not ready: {line}")

    async def _read_line(self, timeout_s: float) -> dict[str, Any]:
        assert self._process is not None
        assert self._process.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                raw = await self._process.stdout.readline()
        except TimeoutError:
            raise RunnerError(
                f"{self.client} runner said nothing for {timeout_s:.0f} s; see {self._log_file}"
            ) from None
        if not raw:
            code = await self._process.wait()
            raise RunnerError(f"{self.client} runner exited ({code}); see {self._log_file}")
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            raise RunnerError(f"{self.client} runner wrote a line that is not JSON: {raw[:300]!r}") from None
        if not isinstance(line, dict):
            raise RunnerError(f"{self.client} runner wrote a line that is not an object: {raw[:300]!r}")
        return line

    async def call(self, op: str, client: str | None, args: dict[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
        """Sends one request; returns its final line (`ok`, `result` or `error`). Events go to `events`."""
        assert self._process is not None
        assert self._process.stdin is not None
        self._next_id += 1
        request_id = self._next_id
        self.events = []
        request: dict[str, Any] = {"id": request_id, "op": op, "args": args}
        if client is not None:
            request["client"] = client
        self._process.stdin.write(json.dumps(request).encode() + b"\n")
        await self._process.stdin.drain()
        async with asyncio.timeout(timeout_s):
            while True:
                line = await self._read_line(timeout_s)
                if line.get("id") != request_id:
                    raise RunnerError(f"{self.client} runner answered id {line.get('id')} to request {request_id}")
                if "event" in line:
                    async with self._arrived:
                        self.events.append(line["event"])
                        self._arrived.notify_all()
                    continue
                if "ok" not in line:
                    raise RunnerError(f"{self.client} runner's final line has no `ok`: {line}")
                return line

    async def wait_events(self, count: int, timeout_s: float = 30.0) -> None:
        """Waits until the request in flight has streamed `count` events."""
        await self.wait_for(lambda events: len(events) >= count, timeout_s)

    async def wait_for(self, condition: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 30.0) -> None:
        """Waits until `condition(events)` holds for the events the request in flight has streamed."""
        async with asyncio.timeout(timeout_s), self._arrived:
            await self._arrived.wait_for(lambda: condition(self.events))

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        assert process.stdin is not None
        try:
            process.stdin.write(b'{"op": "exit"}\n')
            await process.stdin.drain()
            process.stdin.close()
            async with asyncio.timeout(10):
                await process.wait()
        except (TimeoutError, ConnectionError):
            process.kill()
            await process.wait()
