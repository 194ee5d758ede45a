"""Waiting in tests: `eventually` polls a condition until it holds, and fails the test naming what never happened."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

#: How long `eventually` sleeps between two checks.
POLL_INTERVAL_S = 0.02


async def eventually(check: Callable[[], bool | Awaitable[bool]], *, timeout_s: float = 10.0, what: str) -> None:
    """Polls `check` until it returns true.

    Args:
        check: the condition; a plain function, or one returning an awaitable (an `async def`), which is awaited.
        timeout_s: how long to keep polling.
        what: what the test waits for, as the failure message puts it ("the socket to close").

    Raises:
        AssertionError: `check` was still false after `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = check()
        if await outcome if inspect.isawaitable(outcome) else outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(POLL_INTERVAL_S)
