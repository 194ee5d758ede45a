"""Process lifecycle shared by the service, the gateway and `make run`: run until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator


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
