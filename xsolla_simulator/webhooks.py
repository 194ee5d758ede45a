"""Delivering webhooks the way Xsolla does: signed bodies, retried on its schedule, every attempt recorded.

Signature: `Authorization: Signature <sha1(raw body + secret) in hex>` (a plain SHA-1 of the concatenation, not
an HMAC), with `Content-Type: application/json`.

Answers (the `order_paid` page's table): 200, 201 and 204 end the delivery; 400, 401, 402, 403, 404, 409, 415
and 422 end it too, as a rejection (with auto-refund on, Xsolla refunds the player); any other answer, no
answer, a connection error or a timeout is retried on the order webhooks' schedule, "2 times with an interval of
5 minutes, 7 times with an interval of 15 minutes, 10 times with an interval of 60 minutes" (20 attempts in
all). `time_scale` shrinks the waits between attempts (0.001 turns 5 minutes into 0.3 s), never the timeout of
one attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

import aiohttp
import structlog

SUCCESS_STATUSES: Final = frozenset({200, 201, 204})
REJECTION_STATUSES: Final = frozenset({400, 401, 402, 403, 404, 409, 415, 422})

_log = structlog.get_logger("xsolla_simulator.webhooks")

#: What one attempt came to: "delivered" (a success answer), "rejected" (a final error answer), "retry" (it failed
#: and another attempt is scheduled), "gave_up" (it failed and it was the last attempt).
Outcome = Literal["delivered", "rejected", "retry", "gave_up"]


@dataclass(frozen=True)
class RetrySchedule:
    """The waits between delivery attempts: `intervals_s[i]` is the wait after attempt i + 1 fails."""

    intervals_s: tuple[float, ...]

    @classmethod
    def from_steps(cls, steps: Iterable[tuple[int, float]]) -> RetrySchedule:
        """A schedule of (count, interval_s) steps: ((2, 300), (7, 900)) is 300, 300, 900 x 7."""
        return cls(tuple(interval for count, interval in steps for _ in range(count)))

    @property
    def max_attempts(self) -> int:
        """The first attempt and every retry."""
        return 1 + len(self.intervals_s)

    def wait_after(self, attempt: int) -> float | None:
        """The wait before the attempt after `attempt` (numbered from 1); None when `attempt` was the last."""
        return self.intervals_s[attempt - 1] if attempt <= len(self.intervals_s) else None


#: The schedule of `order_paid` / `order_canceled` (and the In-Game Store's universal protocol).
ORDER_RETRY_SCHEDULE: Final = RetrySchedule.from_steps(((2, 300.0), (7, 900.0), (10, 3600.0)))


@dataclass(frozen=True)
class WebhookDelivery:
    """One delivery attempt of one webhook.

    Attributes:
        webhook_id: the webhook it is an attempt of (shared by all its attempts).
        type: the notification type (`order_paid`, `order_canceled`).
        attempt: 1 for the first attempt, 2 for the first retry, and so on.
        at: when the attempt started, on the event loop's clock (`loop.time()`).
        status: the HTTP status answered; None when there was no answer.
        error: why there was no answer ("timeout", or the connection error); None when there was one.
        outcome: see `Outcome`.
    """

    webhook_id: int
    order_id: int
    type: str
    attempt: int
    at: float
    status: int | None
    error: str | None
    outcome: Outcome
    elapsed_s: float


@dataclass(frozen=True)
class Webhook:
    """A webhook as sent: its exact body bytes (every attempt sends the same) and where to."""

    webhook_id: int
    order_id: int
    type: str
    url: str
    body: bytes


def signature(body: bytes, secret: str) -> str:
    """The Authorization header Xsolla sends with `body`: `Signature <sha1(body + secret) hex>`."""
    return "Signature " + hashlib.sha1(body + secret.encode()).hexdigest()  # noqa: S324  # Xsolla's protocol mandates SHA-1


class WebhookSender:
    """Sends webhooks to one URL and retries them in the background.

    Args:
        session: the HTTP client (owned by the caller).
        on_final: called with the last attempt of every webhook that was rejected or given up on.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        secret: str,
        *,
        schedule: RetrySchedule = ORDER_RETRY_SCHEDULE,
        time_scale: float = 1.0,
        timeout_s: float = 10.0,
        on_final: Callable[[WebhookDelivery], Awaitable[None]] | None = None,
    ) -> None:
        self.url = url
        self.deliveries: list[WebhookDelivery] = []
        self.webhooks: list[Webhook] = []
        self._session = session
        self._secret = secret
        self._schedule = schedule
        self._time_scale = time_scale
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._on_final = on_final
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    async def send(self, order_id: int, notification_type: str, body: bytes) -> WebhookDelivery:
        """Sends a webhook with exactly `body`; returns once its first attempt is done, retries go on in the
        background."""
        webhook = Webhook(next(self._ids), order_id, notification_type, self.url, body)
        self.webhooks.append(webhook)
        first: asyncio.Future[WebhookDelivery] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._deliver(webhook, first), name=f"webhook-{webhook.webhook_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await first

    async def settled(self, timeout_s: float) -> None:
        """Waits until every webhook's delivery is over.

        Raises:
            TimeoutError: some were still being retried after `timeout_s`.
        """
        async with asyncio.timeout(timeout_s):
            while self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stops every retry still scheduled."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _deliver(self, webhook: Webhook, first: asyncio.Future[WebhookDelivery]) -> None:
        loop = asyncio.get_running_loop()
        headers = {"Content-Type": "application/json", "Authorization": signature(webhook.body, self._secret)}
        try:
            for attempt in itertools.count(1):
                started = loop.time()
                status, error = await self._attempt(webhook.body, headers)
                wait = self._schedule.wait_after(attempt)
                outcome: Outcome
                if status in SUCCESS_STATUSES:
                    outcome = "delivered"
                elif status in REJECTION_STATUSES:
                    outcome = "rejected"
                else:
                    outcome = "gave_up" if wait is None else "retry"
                record = WebhookDelivery(
                    webhook.webhook_id,
                    webhook.order_id,
                    webhook.type,
                    attempt,
                    started,
                    status,
                    error,
                    outcome,
                    loop.time() - started,
                )
                self.deliveries.append(record)
                if not first.done():
                    first.set_result(record)
                if outcome != "retry":
                    if outcome != "delivered" and self._on_final is not None:
                        try:
                            await self._on_final(record)
                        except Exception:  # a background task: nobody else would see it
                            _log.exception("webhook_final_callback_failed", webhook_id=webhook.webhook_id)
                    return
                assert wait is not None
                await asyncio.sleep(wait * self._time_scale)
        finally:
            if not first.done():  # cancelled before the first attempt finished
                first.cancel()

    async def _attempt(self, body: bytes, headers: Mapping[str, str]) -> tuple[int | None, str | None]:
        try:
            async with self._session.post(self.url, data=body, headers=headers, timeout=self._timeout) as answer:
                await answer.read()
                return answer.status, None
        except TimeoutError:
            return None, "timeout"
        except aiohttp.ClientError as exc:
            return None, f"{type(exc).__name__}: {exc}"
