"""Process lifecycle shared by the service, the gateway and `make run`: run until told to stop."""

from __future__ import annotations

import asyncio
import signal


async def wait_for_stop_signal() -> None:
    """Returns when the process receives SIGTERM (an orchestrator stopping it) or SIGINT (Ctrl-C)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
