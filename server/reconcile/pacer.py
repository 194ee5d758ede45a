"""Spacing of the requests a replica's sweeps send to the provider's order search."""

from __future__ import annotations

import asyncio
import time


class Pacer:
    """Spaces the requests of every sweep of one replica at most `rate_per_s` a second."""

    def __init__(self, rate_per_s: float) -> None:
        self._interval_s = 1.0 / rate_per_s
        self._next = 0.0

    async def wait(self) -> None:
        """Returns when the next request may be sent."""
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self._interval_s
        if slot > now:
            await asyncio.sleep(slot - now)
