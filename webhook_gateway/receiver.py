"""The webhook endpoint: one request in, one answer out, one log line and the metrics.

The order of the checks is the contract:

1. the sender's network, when an allow-list is configured (403), before anything is read;
2. the signature header's presence and form (400 INVALID_SIGNATURE), before the body is read;
3. the body's size, from Content-Length and again while reading (413), and its arrival in time (408);
4. the signature over the raw bytes (400 INVALID_SIGNATURE), hashed as they arrive: nothing in the body is
   parsed, let alone believed, before a configured secret is found to have signed it;
5. the body's meaning (400 INVALID_PARAMETER naming the field);
6. the action: store the event (204 once Redis holds it as durably as `GATEWAY_DURABILITY` asks, also for a
   duplicate; 503 when Redis cannot store it, or not durably in time), or ask the user directory (204 / 200,
   400 INVALID_USER, 503 when it cannot answer).

So a correctly signed order is never refused with a 4xx for a transient reason: everything transient is a 503
that the sender retries. Nothing is stored unless every check passed. What a sender without a secret can cost
is bounded: a request refused at 1-3 is answered at once and its connection closed as soon as the answer is
written, the rest of its body never read (no lingering close: see `webhook_gateway.app`); one refused
at 4 costs reading at most the body limit and hashing it once, in steps no larger than a read from the socket,
plus one short hash per configured secret, and never a parse; bodies larger than any webhook are read a few
at a time at a bounded rate (`webhook_gateway.bodies`). The provider (`core.webhooks`) verifies and
interprets the body and shapes the answers; the receiver knows nothing else about it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from core import logs
from core.errors import NotDurable, StoreUnavailable
from core.eventlog import AppendResult
from core.logs import user_ref
from core.webhooks import Action, Notification, WebhookProvider
from entitlements.v1 import events_pb2
from webhook_gateway.bodies import BodyReader
from webhook_gateway.errors import (
    EventNotDurable,
    EventStoreUnavailable,
    ForbiddenSource,
    ProcessingTimeout,
    Rejected,
    Temporary,
    answer_for,
    internal_error_answer,
)
from webhook_gateway.metrics import UNVERIFIED, GatewayMetrics
from webhook_gateway.sources import SourceFilter
from webhook_gateway.users import UserDirectory

log = logs.get_logger("webhook_gateway")

_MAX_LOGGED_TYPE_CHARS = 64


class EventSink(Protocol):
    """Where accepted events go: `core.eventlog.EventLog` (dedup and XADD in one atomic step)."""

    async def append(self, event: events_pb2.WebhookEvent, raw: bytes) -> AppendResult:
        """Stores `event` with its raw body unless its event id was stored before.

        Raises:
            StoreUnavailable: nothing was stored; the notification must not be acknowledged.
        """
        ...


@dataclass
class _Record:
    """What the log line and the metrics say about one request, filled in as it goes."""

    type_label: str = UNVERIFIED
    result: str = "error"
    notification_type: str | None = None
    project_id: int | None = None
    event_id: str | None = None
    user: str | None = None
    partition: int | None = None
    remote: str | None = None
    reason: str | None = None
    unknown_type: bool = False
    body_complete: bool = False
    exc_info: BaseException | None = None


class WebhookReceiver:
    """Handles `POST <path>` and `POST <path>/<project_id>`.

    Args:
        provider: the webhook provider's protocol.
        sink: the event log.
        users: the user directory, started by the caller.
        metrics: where requests are counted.
        sources: the allow-list and client address rules.
        bodies: reads the bodies (the size limit, and the bound on what large bodies cost).
        request_timeout_s: the time one request may take, from arrival to answer; past it, 408 while the body
            is still arriving, 503 afterwards.
        max_concurrent_stores: appends in flight at once (the Redis connection pool's size). Further requests
            wait for a slot within their timeout: redis-py's pool refuses, rather than queues, a request for a
            connection past its size, which would turn a burst of webhooks into 503s.
    """

    def __init__(
        self,
        *,
        provider: WebhookProvider,
        sink: EventSink,
        users: UserDirectory,
        metrics: GatewayMetrics,
        sources: SourceFilter,
        bodies: BodyReader,
        request_timeout_s: float,
        max_concurrent_stores: int = 32,
    ) -> None:
        self._provider = provider
        self._sink = sink
        self._users = users
        self._metrics = metrics
        self._sources = sources
        self._bodies = bodies
        self._request_timeout_s = request_timeout_s
        self._store_slots = asyncio.Semaphore(max_concurrent_stores)

    async def handle(self, request: web.Request) -> web.Response:
        """Answers one webhook request; never raises, never puts a traceback in the answer."""
        started = time.perf_counter()
        record = _Record()
        try:
            response = await self._handle(request, record)
        except (Rejected, Temporary) as exc:
            answer = answer_for(exc, self._provider.error_body)
            record.result = answer.result
            record.reason = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            response = web.Response(status=answer.status, body=answer.body, content_type="application/json")
        except Exception as exc:
            # A bug: the traceback goes to the log line, a generic 500 to the sender (Xsolla retries it).
            record.exc_info = exc
            answer = internal_error_answer(self._provider.error_body)
            record.result = answer.result
            response = web.Response(status=answer.status, body=answer.body, content_type="application/json")
        if not record.body_complete:
            # Refused before the whole body arrived: close rather than read the rest of it.
            response.force_close()
        duration_s = time.perf_counter() - started
        self._metrics.observe(record.type_label, record.result, duration_s)
        self._log(record, response.status, duration_s)
        return response

    async def _handle(self, request: web.Request, record: _Record) -> web.Response:
        deadline = asyncio.get_running_loop().time() + self._request_timeout_s
        address = self._sources.client_address(request.remote, request.headers)
        record.remote = None if address is None else str(address)
        if not self._sources.allows(address):
            raise ForbiddenSource()
        authentication = self._provider.authentication(request.headers, request.match_info.get("project_id"))
        raw = await self._bodies.read(request.content.readany, request.content_length, deadline, authentication.update)
        record.body_complete = True
        received_at_ns = time.time_ns()

        verified = authentication.verify(raw)
        record.type_label = self._provider.type_label(verified)
        record.project_id = verified.project_id
        notification = self._provider.interpret(verified, received_at_ns)
        record.notification_type = notification.notification_type[:_MAX_LOGGED_TYPE_CHARS]
        record.project_id = notification.project_id
        try:
            async with asyncio.timeout_at(deadline):
                return await self._act(notification, raw, record)
        except TimeoutError as exc:
            raise ProcessingTimeout() from exc

    async def _act(self, notification: Notification, raw: bytes, record: _Record) -> web.Response:
        if notification.action is Action.STORE:
            event = notification.event
            assert event is not None
            record.event_id = event.event_id
            record.user = user_ref(event.user_id) if event.user_id else None
            record.unknown_type = not notification.known
            try:
                async with self._store_slots:
                    result = await self._sink.append(event, raw)
            except NotDurable as exc:
                self._metrics.durability_wait.labels(exc.mode).observe(exc.waited_s)
                raise EventNotDurable(str(exc)) from exc
            except StoreUnavailable as exc:
                raise EventStoreUnavailable(str(exc)) from exc
            if result.wait_s is not None:
                self._metrics.durability_wait.labels(result.durability).observe(result.wait_s)
            record.partition = result.partition
            record.result = "duplicate" if result.duplicate else "stored"
            if not notification.known and not result.duplicate:
                self._metrics.unknown_types.labels(notification.type_label).inc()
            return web.Response(status=204)

        query = notification.query
        assert query is not None
        record.user = user_ref(query.user_id or query.public_id)
        if notification.action is Action.VALIDATE_USER:
            await self._users.validate(query)
            record.result = "answered"
            return web.Response(status=204)
        found = await self._users.search(query)
        record.result = "answered"
        return web.Response(status=200, body=self._provider.user_answer(found), content_type="application/json")

    def _log(self, record: _Record, status: int, duration_s: float) -> None:
        fields: dict[str, Any] = {
            "type": record.notification_type,
            "project": record.project_id,
            "result": record.result,
            "status": status,
            "duration_ms": round(duration_s * 1000, 3),
            "event_id": record.event_id,
            "user": record.user,
            "partition": record.partition,
            "remote": record.remote,
        }
        if record.reason is not None:
            fields["reason"] = record.reason
        if record.unknown_type:
            fields["unknown_type"] = True
        if record.exc_info is not None:
            fields["exc_info"] = record.exc_info
        fields = {key: value for key, value in fields.items() if value is not None}
        if status >= 500:
            log.error("webhook", **fields)
        elif status >= 400 or record.unknown_type:
            log.warning("webhook", **fields)
        else:
            log.info("webhook", **fields)
