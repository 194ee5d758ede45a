"""One batch of a partition's entries, as the reader read or claimed it: decoded, applied together, acknowledged
together, and the failures of single entries retried or dead-lettered without holding back the others.

The batch's writes go to Redis in one round trip per node, with one durability wait per node, one player's events
in stream order (`server.fulfillment.Fulfillment.apply_many`); the order index and status publications follow in
one round trip; the applied entries are then acknowledged in one round trip (one XACK per entry, pipelined, so that
each reply says whether this delivery is the one that acknowledged it). An entry that fails because of itself is
left pending for a retry, or dead-lettered at its `max_deliveries`-th delivery. A failure that is Redis's leaves
the entries it touched pending (never dead-lettered) and is raised once the rest of the batch is acknowledged, so
the reader backs off and reads its own pending entries again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import structlog

from core.connections import RedisClient
from core.eventlog import MalformedEntry, decode_event
from core.keys import CONSUMER_GROUP, EventKeys
from entitlements.v1 import events_pb2
from server.config import ConsumerSettings
from server.consumer.deliveries import ConsumerHooks, StreamEntry, check_project, is_transient, report_applied
from server.deadletters import DeadLetters
from server.errors import EntitlementsError, InvalidEvent
from server.fulfillment import Applied, Fulfillment, label_of_entry, type_label
from server.metrics import ServiceMetrics

log = structlog.get_logger("server.consumer")


class BatchApplier:
    """Applies batches of one consumer's entries.

    Args:
        redis: the consumer's client (XACK).
        fulfillment: applies decoded events.
        metrics: the service's metrics.
        dead_letters: where entries that keep failing go.
        settings: the delivery limit and the retry delay.
        hooks: fault-injection seams, run per entry.
        consumer: this consumer's name in the group.
    """

    def __init__(
        self,
        redis: RedisClient,
        fulfillment: Fulfillment,
        metrics: ServiceMetrics,
        dead_letters: DeadLetters,
        settings: ConsumerSettings,
        hooks: ConsumerHooks,
        consumer: str,
    ) -> None:
        self._redis = redis
        self._fulfillment = fulfillment
        self._metrics = metrics
        self._dead_letters = dead_letters
        self._settings = settings
        self._hooks = hooks
        self._consumer = consumer

    async def apply(self, keys: EventKeys, entries: Sequence[StreamEntry], stage: Callable[[str], None]) -> None:
        """Applies `entries` (in stream order) and acknowledges those applied; `stage` is told what is being done.

        Raises:
            Redis errors and StoreUnavailable: Redis failed for some entries; they stay pending for a retry (the
                others were acknowledged first).
        """
        stage("apply")
        started = time.perf_counter()
        transient: BaseException | None = None
        labels: list[str] = []
        ready: list[tuple[StreamEntry, events_pb2.WebhookEvent]] = []
        for entry in entries:
            label = label_of_entry(entry.fields)
            try:
                if self._hooks.before_apply is not None:
                    await self._hooks.before_apply(entry)
                try:
                    event = decode_event(entry.fields)
                except MalformedEntry as exc:
                    raise InvalidEvent(str(exc)) from exc
                label = type_label(event.type)
                check_project(event, entry.project_id)
            except Exception as exc:
                self._metrics.events.labels(label, "error").inc()
                if is_transient(exc):
                    # Redis's failure: this entry and the batch's later ones wait (none may overtake it).
                    transient = exc
                    break
                await self._reject(keys, entry, label, exc, stage)
                continue
            labels.append(label)
            ready.append((entry, event))
        results = await self._fulfillment.apply_many([event for _, event in ready])
        elapsed = time.perf_counter() - started
        done: list[tuple[StreamEntry, events_pb2.WebhookEvent, Applied]] = []
        for (entry, event), label, result in zip(ready, labels, results, strict=True):
            try:
                if isinstance(result, Exception):
                    raise result
                if self._hooks.before_ack is not None:
                    await self._hooks.before_ack(entry)
            except Exception as exc:
                self._metrics.events.labels(label, "error").inc()
                if is_transient(exc):
                    transient = transient or exc
                else:
                    await self._reject(keys, entry, label, exc, stage)
                continue
            done.append((entry, event, result))
        if done:
            stage("ack")
            acknowledged = await acknowledge(self._redis, keys, [entry.entry_id for entry, _, _ in done])
            for (entry, event, applied), ours in zip(done, acknowledged, strict=True):
                report_applied(self._metrics, entry, event, applied, elapsed, acknowledged=ours)
        if transient is not None:
            raise transient

    async def _reject(
        self, keys: EventKeys, entry: StreamEntry, label: str, exc: Exception, stage: Callable[[str], None]
    ) -> None:
        """A delivery failed because of the entry (or a bug): leave it pending, or dead-letter it at the limit."""
        error = f"{type(exc).__name__}: {exc}"
        context = {
            "type": label,
            "project_id": entry.project_id,
            "partition": entry.partition,
            "entry_id": entry.entry_id,
            "deliveries": entry.deliveries,
            "error": error,
        }
        if not isinstance(exc, EntitlementsError):
            context["exc_info"] = exc  # unexpected: keep the traceback in the log
        if entry.deliveries < self._settings.max_deliveries:
            log.warning("event_failed", retry_after_s=self._settings.claim_idle_s, **context)
            return
        stage("dead_letter")
        dead_id = await self._dead_letters.move(keys, entry.entry_id, self._consumer, error, entry.deliveries)
        if dead_id is None:
            return  # claimed by another consumer meanwhile; it decides
        self._metrics.events.labels(label, "dead_lettered").inc()
        self._metrics.dead_letters.labels(label).inc()
        log.error("event_dead_lettered", dead_letter_id=dead_id, stream=keys.dead_letters, **context)


async def acknowledge(redis: RedisClient, keys: EventKeys, entry_ids: Sequence[str]) -> list[bool]:
    """Acknowledges entries in one round trip; per entry, whether this call removed it from the pending list (False:
    another consumer that claimed it meanwhile acknowledged it first).

    Raises:
        Redis errors: the round trip failed (the entries may or may not be acknowledged).
    """
    pipe = redis.pipeline(transaction=False)
    for entry_id in entry_ids:
        pipe.xack(keys.stream, CONSUMER_GROUP, entry_id)
    return [bool(int(removed)) for removed in await pipe.execute()]
