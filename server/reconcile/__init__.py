"""Reconciliation with the provider: orders it reports paid that no webhook brought are applied from its own records.

- `orders`: a provider's record of an order as the event the consumer applies (bundles expanded through the
  catalog), appended to the event log like a webhook;
- `index`: which player each order belongs to and which orders were applied here, per project;
- `tracked`: the tracker's reconciliation (`TrackerReconciler`): an order a GetOrderStatus stream saw paid at the
  provider, that no webhook brought within a grace period, applied from the provider's Get order;
- `sweep`, `sweeper`: the periodic sweep of each project's orders at the provider (one sweep; the loops that run
  them, one replica at a time);
- `recheck`: the orders a sweep searches again once its window has moved past them (late payments, late cancels);
- `lease`, `progress`, `pacer`: the sweeper's lease, what it keeps in Redis (progress, orders seen, reports), the
  spacing of its requests;
- `settings`: `ReconcileSettings`, read with the service's others (`server.config`).
"""

from server.reconcile.findings import Finding, SweepOutcome, Window
from server.reconcile.index import AUTHORITATIVE, CLAIM, OrderIndex, OrderOwner
from server.reconcile.lease import LeaseLost, SweeperLease
from server.reconcile.orders import order_event, order_lines, reconciled_event_id
from server.reconcile.pacer import Pacer
from server.reconcile.progress import Report, SweepProgress, SweepRecords
from server.reconcile.recheck import Rechecks
from server.reconcile.sweep import OrderSweep, SweepParts
from server.reconcile.sweeper import LeaseBusy, Range, Sweeper, describe, sweeper_for
from server.reconcile.tracked import TrackerReconciler

__all__ = [
    "AUTHORITATIVE",
    "CLAIM",
    "Finding",
    "LeaseBusy",
    "LeaseLost",
    "OrderIndex",
    "OrderOwner",
    "OrderSweep",
    "Pacer",
    "Range",
    "Rechecks",
    "Report",
    "SweepOutcome",
    "SweepParts",
    "SweepProgress",
    "SweepRecords",
    "Sweeper",
    "SweeperLease",
    "TrackerReconciler",
    "Window",
    "describe",
    "order_event",
    "order_lines",
    "reconciled_event_id",
    "sweeper_for",
]
