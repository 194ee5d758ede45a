"""One delivery of an event-stream entry: what it is, whether its event belongs on its project's stream, the
fault-injection seams around applying it, which failures are Redis's rather than the entry's (those are retried,
never dead-lettered), and how an applied one is reported.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.exceptions as redis_errors
import structlog

from core.logs import user_ref
from entitlements.v1 import events_pb2
from server.errors import InvalidEvent, StoreUnavailable
from server.fulfillment import ORIGIN_NAMES, Applied
from server.metrics import ServiceMetrics

log = structlog.get_logger("server.consumer")

# Failures that say nothing about the entry: Redis unreachable, slow, restarting or resharding. Every RedisError
# but a ResponseError (an error reply to a valid connection: NOGROUP, a script's error) is one of them.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (StoreUnavailable, redis_errors.RedisError, OSError, TimeoutError)


def is_transient(exc: BaseException) -> bool:
    """Whether a failure is Redis's rather than the entry's: retry it, never dead-letter for it."""
    return isinstance(exc, TRANSIENT_ERRORS) and not isinstance(exc, redis_errors.ResponseError)


@dataclass(frozen=True)
class StreamEntry:
    """One delivery of an event-stream entry to this consumer."""

    project_id: int
    partition: int
    entry_id: str
    fields: dict[bytes, bytes]
    # How many times the group has delivered the entry, this delivery included.
    deliveries: int


def check_project(event: events_pb2.WebhookEvent, project_id: int) -> None:
    """An event is applied in the project of the stream it is on, where the gateway appended it because of its
    `project_id`. Entries moved by `migrate-layout` from a layout-1 stream may name no project: they take the
    stream's.

    Raises:
        InvalidEvent: the event names another project than its stream's (the gateway did not append it there;
            applying it would write outside the stream's project).
    """
    if event.project_id == 0:
        event.project_id = project_id
    elif event.project_id != project_id:
        raise InvalidEvent(f"the event names project {event.project_id} but is on the stream of project {project_id}")


Hook = Callable[[StreamEntry], Awaitable[None]]


@dataclass(frozen=True)
class ConsumerHooks:
    """Seams for fault-injection tests, run for each entry of a batch. A hook that raises fails the delivery (as a
    bad entry would); one that never returns leaves the consumer stuck at that point, to be stopped (cancelled)
    there.

    Attributes:
        before_apply: runs after the entry was read, before anything of its batch is applied (the batch's writes go
            out once it returned for every entry).
        before_ack: runs after the batch's effects are committed and published, before its XACK.
    """

    before_apply: Hook | None = None
    before_ack: Hook | None = None


def granted_by_this_entry(entry: StreamEntry, event: events_pb2.WebhookEvent, applied: Applied) -> bool:
    """Whether this entry's event is the order_paid that granted its order: applied by this delivery, or by an
    earlier delivery of the same entry whose outcome was never reported (the write committed, then its durability
    wait, the publication, the XACK or the process failed, so the entry was delivered again and replays).

    An entry is reported only by the delivery that acknowledges it, so a redelivered entry was not reported
    before. The one case counted twice: two entries of the same event (a provider's retry appended again) whose
    second was delivered more than once, its first delivery failing before its write.
    """
    if applied.type != "order_paid" or applied.outcome is None or applied.outcome.paid_event_id != event.event_id:
        return False
    if applied.result == "applied":
        return True
    outcome = applied.outcome
    return applied.result == "replayed" and entry.deliveries > 1 and outcome.status == "paid" and not outcome.withheld


def report_applied(
    metrics: ServiceMetrics,
    entry: StreamEntry,
    event: events_pb2.WebhookEvent,
    applied: Applied,
    elapsed_s: float,
    *,
    acknowledged: bool = True,
) -> None:
    """Counts an acknowledged delivery in the metrics and logs it (one `event_applied` line per delivery).

    Args:
        elapsed_s: how long applying it took, acknowledgement excluded (for a batch: the batch's).
        acknowledged: this delivery's XACK removed the entry from the pending list (False: a consumer that had
            claimed it meanwhile acknowledged it first, and reports the grant's timing).
    """
    received_at_ms = event.received_at.ToMilliseconds() if event.HasField("received_at") else 0
    metrics.events.labels(applied.type, applied.result).inc()
    metrics.event_apply.labels(applied.type).observe(elapsed_s)
    if received_at_ms and applied.result != "replayed":
        metrics.event_delay.labels(applied.type).observe(max(0.0, time.time() - received_at_ms / 1000))
    if acknowledged and applied.outcome is not None and granted_by_this_entry(entry, event, applied):
        # From the payment (as first known: the webhook's arrival, or what reconciliation knew) to the grant's
        # commit (the store's clock), once per grant: by the delivery that acknowledges the entry that granted it.
        paid_at_ms = event.paid_at.ToMilliseconds() if event.HasField("paid_at") else received_at_ms
        granted_at_ms = applied.outcome.paid_at_ms or int(time.time() * 1000)
        if paid_at_ms:
            metrics.payment_to_grant.labels(ORIGIN_NAMES.get(event.origin, "webhook")).observe(
                max(0.0, (granted_at_ms - paid_at_ms) / 1000)
            )
    if applied.type == "order_paid" and applied.result == "applied":
        metrics.grants_applied.inc(applied.lines_changed)
    elif applied.type == "order_canceled" and applied.result == "applied":
        metrics.grants_undone.inc(applied.lines_changed)
    if applied.kind_conflicts:
        metrics.kind_conflicts.inc(applied.kind_conflicts)
    if applied.sandbox_policy and applied.result != "replayed":
        metrics.sandbox_events.labels(applied.type, applied.sandbox_policy).inc()
    log.info(
        "event_applied",
        type=applied.type,
        result=applied.result,
        event_id=event.event_id,
        user=user_ref(event.user_id),
        order_id=applied.order.order_id if applied.order else None,
        lines_changed=applied.lines_changed,
        sandbox_policy=applied.sandbox_policy or None,
        note=applied.note or None,
        project_id=entry.project_id,
        partition=entry.partition,
        entry_id=entry.entry_id,
        deliveries=entry.deliveries,
        apply_ms=round(elapsed_s * 1000, 3),
    )
    if applied.reconciled_difference:
        metrics.reconcile_orders.labels(str(entry.project_id), applied.reconciled_by, "lines_differ").inc()
        log.warning(
            "order_lines_differ",
            event_id=event.event_id,
            order_id=applied.order.order_id if applied.order else None,
            project_id=entry.project_id,
            reconciled_by=applied.reconciled_by,
            difference=applied.reconciled_difference[:500],
            note="the late webhook lists other lines than the reconciliation applied; nothing more was granted",
        )
    if applied.kind_conflicts:
        log.warning(
            "order_kind_conflict",
            event_id=event.event_id,
            order_id=applied.order.order_id if applied.order else None,
            lines=applied.kind_conflicts,
            note="granted as the kind the player holds, not the catalog's",
        )
