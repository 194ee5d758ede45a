"""What a sweep finds: one order's finding, the window swept, the sweep's outcome (`server.reconcile.sweep`)."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from datetime import UTC, datetime


def iso(ms: int) -> str:
    """`ms` since the epoch as an ISO 8601 UTC time, to the second."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Finding:
    """What a sweep found about one order and did (or, dry, would do).

    Attributes:
        order_id: the provider's order id.
        status: its status word at the provider ("" when the provider did not return it).
        player: the player, "" when unknown.
        action: APPLY, UNDO, ALREADY, MISMATCH, UNRESOLVED, FAILED or NOTHING.
        why: why (unresolved, mismatch, failed, nothing), or a note.
    """

    order_id: str
    status: str
    player: str
    action: str
    why: str = ""


@dataclass(frozen=True, slots=True)
class Window:
    """The orders a sweep reads: created in [`from_ms`, `until_ms`], from `offset`.

    Attributes:
        stored: the periodic window, whose progress is saved after every page.
        continues: it starts at the watermark minus the overlap, so an earlier sweep saw what precedes it.
    """

    from_ms: int
    until_ms: int
    offset: int = 0
    stored: bool = False
    continues: bool = False


@dataclass
class SweepOutcome:
    """What one sweep found: counts by metric result, and (when collected) a finding per order."""

    project_id: int
    window: Window
    dry_run: bool
    pages: int = 0
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    findings: list[Finding] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    rechecks: int = 0
