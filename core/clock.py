"""The wall clock as the service stores it: milliseconds since the epoch (order hashes, reports, ledger pages)."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Now, in whole milliseconds since the epoch."""
    return time.time_ns() // 1_000_000
