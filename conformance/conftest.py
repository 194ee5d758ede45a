"""Fixtures of the conformance suite: one stack for the whole run, one runner process per client."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from conformance.runners import RunnerProcess
from conformance.stack import ConformanceStack


class Runners:
    """Starts each client's runner on first use and keeps it for the run; records what each scenario gave."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: dict[str, RunnerProcess] = {}
        self.transcripts: dict[tuple[str, str], Any] = {}

    async def get(self, client: str) -> RunnerProcess:
        if client in self.started and self.started[client].broken:
            await self.started.pop(client).stop()
        if client not in self.started:
            runner = RunnerProcess(client, self.log_dir / f"runner-{client}.log")
            await runner.start()
            self.started[client] = runner
        return self.started[client]

    async def stop(self) -> None:
        for runner in self.started.values():
            await runner.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stack() -> AsyncIterator[ConformanceStack]:
    with tempfile.TemporaryDirectory(prefix="entitlements-conformance-") as workdir:
        started = ConformanceStack(Path(workdir))
        try:
            await started.start()
            yield started
        finally:
            await started.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def runners(stack: ConformanceStack) -> AsyncIterator[Runners]:
    started = Runners(stack.workdir / "logs")
    try:
        yield started
    finally:
        await started.stop()
