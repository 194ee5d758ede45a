"""Process lifecycle shared by the service, the gateway and `make run`: run until told to stop; stop what runs."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from typing import Any


@contextlib.asynccontextmanager
async def stop_signals() -> AsyncIterator[asyncio.Event]:
    """An event set when the process receives SIGTERM (an orchestrator stopping it) or SIGINT (Ctrl-C), from the
    moment the block starts.

    Enter it before starting anything that announces it is ready: a signal sent as soon as the announcement is
    read (by an orchestrator, a test) must find the handlers in place, or Python's default SIGINT handler raises
    KeyboardInterrupt in the middle of the running process, which then never stops what it started.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        yield stop
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None, again_after_s: float = 0.5) -> None:
    """Cancels `tasks` (None ones skipped) and waits until each has ended, cancelling again any still running after
    `again_after_s`. Their exceptions are retrieved, not raised.

    A single cancel() is not enough on Python 3.11: `asyncio.wait_for` (which redis-py awaits inside every command
    it sends) returns its result instead of raising CancelledError when the cancellation and the awaited operation's
    completion meet in one loop iteration (CPython gh-86296, fixed in 3.12). The cancelled loop then carries on to
    its next wait (a sweeper's next sweep, a minute later) and a stop that awaits it hangs until then.
    """
    pending: set[asyncio.Future[Any]] = {task for task in tasks if task is not None and not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again_after_s)
    for ended in tasks:
        if ended is not None and not ended.cancelled():
            ended.exception()
