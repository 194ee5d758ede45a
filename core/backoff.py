"""The one backoff policy: exponential with "equal jitter", used wherever something waits after failures in a
row (the event consumer on Redis, the order-status subscription, polling an order at the provider).

Attempt n (from 0) waits between half and all of min(cap_s, base_s * 2**n): the wait grows fast, never exceeds
the cap, and many clients failing together spread out instead of retrying in lockstep.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with equal jitter.

    Attributes:
        base_s: the ceiling of the first wait (attempt 0).
        cap_s: the largest ceiling, whatever the attempt.
    """

    base_s: float
    cap_s: float

    def ceiling_s(self, attempt: int) -> float:
        """The longest wait after `attempt` (from 0): min(cap_s, base_s * 2**attempt)."""
        return min(self.cap_s, self.base_s * 2.0 ** min(max(attempt, 0), 30))

    def delay_s(self, attempt: int) -> float:
        """A wait between half and all of `ceiling_s(attempt)`."""
        ceiling = self.ceiling_s(attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)


class Wakeup:
    """A backoff wait that can be cut short: `wake()` ends every `sleep` in progress at once (later sleeps wait
    again). Whoever knows that the thing being waited for is back (the supervisor of the embedded Redis) wakes the
    loops that back off from it, instead of letting them sleep out their wait."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        """Ends the sleeps in progress."""
        self._event.set()
        self._event = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        """Waits `seconds`, or less if `wake()` is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._event.wait()
