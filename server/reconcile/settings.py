"""Reconciliation's settings (`ENTITLEMENTS_RECONCILE_*`), read with the service's others (`server.config`)."""

from __future__ import annotations

from dataclasses import dataclass

from core.environ import EnvReader


@dataclass(frozen=True)
class ReconcileSettings:
    """Reconciliation with the provider: orders it reports paid that no webhook brought (see
    docs/RECONCILIATION.md)."""

    # A tracker that learned from the provider that its order is paid or done applies it from Get order when no
    # order_paid has been applied this long after (the tracker's reconciliation).
    tracker_enabled: bool = True
    grace_s: float = 60.0
    # The sweeper: every project with admin API credentials is searched every `sweep_interval_s`, over the last
    # `first_window_h` hours on the first run, then from the stored watermark minus `overlap_s`.
    sweeper_enabled: bool = True
    sweep_interval_s: float = 300.0
    first_window_h: float = 72.0
    overlap_s: float = 600.0
    # Requests per second to the provider's order search, per replica (its rate limits answer 429 beyond them).
    requests_per_s: float = 2.0
    # One sweeper per project across every replica: a lease in Redis that a crashed holder loses after this long.
    lease_s: float = 30.0
    # How long the order index remembers an order's player (server.reconcile.index).
    index_retention_days: float = 30.0
    # Orders seen unfinished, and orders applied, are searched again for this long after their creation (paid, or
    # canceled, after the sweep's window moved past them), at most `rechecks` creation seconds per sweep
    # (server.reconcile.recheck); 0 turns the re-checks off.
    pending_h: float = 24.0
    rechecks: int = 100

    @classmethod
    def from_env(cls, reader: EnvReader) -> ReconcileSettings:
        return cls(
            tracker_enabled=reader.boolean("ENTITLEMENTS_RECONCILE_TRACKER", True),
            grace_s=reader.number("ENTITLEMENTS_RECONCILE_GRACE_S", 60.0, minimum=0.1),
            sweeper_enabled=reader.boolean("ENTITLEMENTS_RECONCILE_SWEEPER", True),
            sweep_interval_s=reader.number("ENTITLEMENTS_RECONCILE_INTERVAL_S", 300.0, minimum=1.0),
            first_window_h=reader.number("ENTITLEMENTS_RECONCILE_FIRST_WINDOW_H", 72.0, minimum=0.01),
            overlap_s=reader.number("ENTITLEMENTS_RECONCILE_OVERLAP_S", 600.0, minimum=0.0),
            requests_per_s=reader.number("ENTITLEMENTS_RECONCILE_REQUESTS_PER_S", 2.0, minimum=0.01),
            lease_s=reader.number("ENTITLEMENTS_RECONCILE_LEASE_S", 30.0, minimum=1.0),
            index_retention_days=reader.number("ENTITLEMENTS_RECONCILE_INDEX_DAYS", 30.0, minimum=1.0),
            pending_h=reader.number("ENTITLEMENTS_RECONCILE_PENDING_H", 24.0, minimum=0.1),
            rechecks=reader.integer("ENTITLEMENTS_RECONCILE_RECHECKS", 100, minimum=0),
        )
