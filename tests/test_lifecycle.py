"""`core.lifecycle.cancel_and_wait`: a loop whose cancellation Python 3.11's `asyncio.wait_for` swallowed stops."""

from __future__ import annotations

import asyncio
import sys

import pytest

from core.lifecycle import cancel_and_wait


class SwallowingLoop:
    """A loop that waits on operations with `asyncio.wait_for`, as redis-py does inside every command; `race()`
    completes the operation under way and cancels the loop in the same loop iteration."""

    def __init__(self) -> None:
        self.operation: asyncio.Future[None] | None = None
        self.rounds = 0
        self.started = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.operation = asyncio.get_running_loop().create_future()
            self.started.set()
            await asyncio.wait_for(self.operation, timeout=60)
            self.rounds += 1

    async def race(self) -> None:
        await self.started.wait()
        assert self.operation is not None
        self.operation.set_result(None)
        self.task.cancel()


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="asyncio.wait_for no longer swallows a cancellation")
async def test_a_single_cancel_can_be_swallowed_by_wait_for() -> None:
    """The failure the helper exists for: the cancelled loop goes on to its next wait."""
    loop = SwallowingLoop()
    await loop.race()
    done, _ = await asyncio.wait({loop.task}, timeout=0.5)
    assert not done
    assert loop.rounds == 1
    await cancel_and_wait(loop.task)


async def test_a_swallowed_cancellation_is_repeated_until_the_task_ends() -> None:
    loop = SwallowingLoop()
    await loop.race()
    await asyncio.wait_for(cancel_and_wait(loop.task, again_after_s=0.05), timeout=5)
    assert loop.task.cancelled()


async def test_ended_tasks_and_none_are_accepted_and_exceptions_retrieved_not_raised() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    failed = asyncio.get_running_loop().create_task(fails())
    await asyncio.sleep(0)
    sleeping = asyncio.get_running_loop().create_task(asyncio.sleep(60))
    await cancel_and_wait(None, failed, sleeping)
    assert sleeping.cancelled()
    assert isinstance(failed.exception(), ValueError)
