"""Delivering webhooks the way Xsolla does: signed bodies, retried on its schedule, every attempt recorded.

Signature: `Authorization: Signature <sha1(raw body + secret) in hex>` (a plain SHA-1 of the concatenation, not
an HMAC), with `Content-Type: application/json`.

Answers (the `order_paid` page's table): 200, 201 and 204 end the delivery; 400, 401, 402, 403, 404, 409, 415
and 422 end it too, as a rejection (with auto-refund on, Xsolla refunds the player); any other answer, no
answer, a connection error or a timeout is retried on the order webhooks' schedule, "2 times with an interval of
5 minutes, 7 times with an interval of 15 minutes, 10 times with an interval of 60 minutes" (20 attempts in
all). Xsolla documents "12 retries at increasing intervals" for `payment` and `refund` without the intervals,
so every family is retried on that one schedule. `time_scale` shrinks the waits between attempts (0.001 turns 5
minutes into 0.3 s), never the timeout of one attempt.

Every webhook belongs to a project and goes to that project's URL, signed with its secret. For tests of
out-of-order delivery, webhooks can be held (created and recorded, not sent) and released later, and any
webhook can be sent again byte for byte. For tests of reconciliation, a share of webhooks can be dropped (lost:
recorded, never sent, chosen by a seeded draw so a run repeats) and delivered late on demand. A webhook may carry
a follow-up, sent only once it was delivered (a 2xx): that is how the separate mode sends `order_paid` after the
`payment` was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

import aiohttp
import structlog

from xsolla_simulator.errors import InvalidRequest
from xsolla_simulator.projects import SimProject

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


#: The schedule of `order_paid` / `order_canceled` (and the In-Game Store's universal protocol), used for every
#: family.
ORDER_RETRY_SCHEDULE: Final = RetrySchedule.from_steps(((2, 300.0), (7, 900.0), (10, 3600.0)))


@dataclass(frozen=True)
class WebhookDelivery:
    """One delivery attempt of one webhook.

    Attributes:
        webhook_id: the webhook it is an attempt of (shared by all its attempts).
        project_id: the project whose webhook it is.
        order_id: the order it is about; None for a subscription webhook.
        type: the notification type (`order_paid`, `payment`, `update_subscription`, ...).
        attempt: 1 for the first attempt, 2 for the first retry, and so on.
        at: when the attempt started, on the event loop's clock (`loop.time()`).
        status: the HTTP status answered; None when there was no answer.
        error: why there was no answer ("timeout", or the connection error); None when there was one.
        outcome: see `Outcome`.
        subscription_id: the subscription it is about; None for an order webhook.
    """

    webhook_id: int
    project_id: int
    order_id: int | None
    type: str
    attempt: int
    at: float
    status: int | None
    error: str | None
    outcome: Outcome
    elapsed_s: float
    subscription_id: str | None = None


@dataclass(frozen=True)
class Webhook:
    """A webhook as made: its exact body bytes (every attempt sends the same), where to, and what about.

    Attributes:
        held: it was held when made (see `WebhookSender.hold`); it stays True after its release.
        dropped: it was dropped when made (see `WebhookSender.drop`); it stays True once delivered late.
    """

    webhook_id: int
    project_id: int
    order_id: int | None
    type: str
    url: str
    body: bytes
    subscription_id: str | None = None
    held: bool = False
    dropped: bool = False


#: What to send once a webhook was delivered (the separate mode's `order_paid` after its `payment`).
FollowUp = Callable[[], Awaitable[object]]


def signature(body: bytes, secret: str) -> str:
    """The Authorization header Xsolla sends with `body`: `Signature <sha1(body + secret) hex>`."""
    return "Signature " + hashlib.sha1(body + secret.encode()).hexdigest()  # noqa: S324  # Xsolla's protocol mandates SHA-1


@dataclass
class _Hold:
    """Holds the next `remaining` webhooks (None: all until cleared) of `types` (empty: any) of a project; or,
    with `draw`, drops each such webhook whose draw falls under `share`."""

    types: frozenset[str]
    project_id: int | None
    remaining: int | None
    share: float = 1.0
    draw: random.Random | None = None

    def matches(self, webhook: Webhook) -> bool:
        return (not self.types or webhook.type in self.types) and self.project_id in (None, webhook.project_id)


@dataclass(frozen=True)
class _Outgoing:
    webhook: Webhook
    secret: str
    then: FollowUp | None


class WebhookSender:
    """Sends every project's webhooks and retries them in the background.

    Args:
        session: the HTTP client (owned by the caller).
        on_final: called with the last attempt of every webhook that was rejected or given up on.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        schedule: RetrySchedule = ORDER_RETRY_SCHEDULE,
        time_scale: float = 1.0,
        timeout_s: float = 10.0,
        on_final: Callable[[WebhookDelivery], Awaitable[None]] | None = None,
    ) -> None:
        self.deliveries: list[WebhookDelivery] = []
        self.webhooks: list[Webhook] = []
        self._session = session
        self._schedule = schedule
        self._time_scale = time_scale
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._on_final = on_final
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._outgoing: dict[int, _Outgoing] = {}
        self._holds: list[_Hold] = []
        self._held: dict[int, _Outgoing] = {}
        self._drops: list[_Hold] = []
        self._dropped: dict[int, _Outgoing] = {}

    async def send(
        self,
        project: SimProject,
        notification_type: str,
        body: bytes,
        *,
        order_id: int | None = None,
        subscription_id: str | None = None,
        then: FollowUp | None = None,
    ) -> WebhookDelivery | None:
        """Makes a webhook with exactly `body` for `project`'s URL and secret, and sends it.

        Args:
            then: sent once this webhook was delivered (never when it is rejected or given up on).

        Returns:
            Its first attempt, once done (retries go on in the background); None when it is held.

        Raises:
            InvalidRequest: the project has no webhook URL.
        """
        if project.webhook_url is None:
            raise InvalidRequest(f"project {project.project_id} has no webhook_url")
        webhook = Webhook(
            next(self._ids), project.project_id, order_id, notification_type, project.webhook_url, body, subscription_id
        )
        return await self._submit(webhook, project.webhook_secret, then)

    async def _submit(self, webhook: Webhook, secret: str, then: FollowUp | None) -> WebhookDelivery | None:
        # A drop comes first: a webhook lost on the way is never seen, held or not.
        drop = next((rule for rule in self._drops if rule.matches(webhook)), None)
        if drop is not None and drop.draw is not None and drop.draw.random() < drop.share:
            webhook = dataclasses.replace(webhook, dropped=True)
        hold = None if webhook.dropped else next((rule for rule in self._holds if rule.matches(webhook)), None)
        if hold is not None:
            webhook = dataclasses.replace(webhook, held=True)
            if hold.remaining is not None:
                hold.remaining -= 1
                if hold.remaining == 0:
                    self._holds.remove(hold)
        outgoing = _Outgoing(webhook, secret, then)
        self.webhooks.append(webhook)
        self._outgoing[webhook.webhook_id] = outgoing
        if webhook.dropped or webhook.held:
            (self._dropped if webhook.dropped else self._held)[webhook.webhook_id] = outgoing
            _log.debug("webhook_dropped" if webhook.dropped else "webhook_held", webhook_id=webhook.webhook_id)
            return None
        return await self._start(outgoing)

    # --- holding, releasing, sending again ------------------------------------------------------------------

    def hold(self, types: Iterable[str] = (), *, project_id: int | None = None, times: int | None = None) -> None:
        """Holds the next `times` webhooks (None: every one until `clear_holds`) of `types` (none named: any
        type) of `project_id` (None: any project): they are made and recorded, not sent, until released.

        Raises:
            InvalidRequest: `times` < 1.
        """
        if times is not None and times < 1:
            raise InvalidRequest("times must be >= 1 (or None for every webhook)")
        chosen = frozenset((types,) if isinstance(types, str) else types)
        self._holds.append(_Hold(chosen, project_id, times))

    def clear_holds(self) -> None:
        """Holds no more webhooks from now on (those already held stay held until released)."""
        self._holds.clear()

    @property
    def held(self) -> list[Webhook]:
        """The webhooks held and not yet released, oldest first."""
        return [outgoing.webhook for outgoing in self._held.values()]

    async def release(self, webhook_id: int) -> WebhookDelivery:
        """Sends a held webhook now (with its follow-up, if it had one).

        Returns:
            Its first attempt; retries go on in the background.

        Raises:
            InvalidRequest: no webhook with that id is held.
        """
        outgoing = self._held.pop(webhook_id, None)
        if outgoing is None:
            raise InvalidRequest(f"webhook {webhook_id} is not held")
        return await self._start(outgoing)

    async def resend(self, webhook_id: int) -> WebhookDelivery | None:
        """Sends a webhook already made again, as a new webhook with the same bytes, URL and signature (a
        duplicate, as a retry or a replay at Xsolla's side is), without its follow-up. Holds apply to it.

        Returns:
            Its first attempt; None when it is held.

        Raises:
            InvalidRequest: no webhook has that id.
        """
        outgoing = self._outgoing.get(webhook_id)
        if outgoing is None:
            raise InvalidRequest(f"no webhook {webhook_id} on this simulator")
        again = dataclasses.replace(outgoing.webhook, webhook_id=next(self._ids), held=False, dropped=False)
        return await self._submit(again, outgoing.secret, None)

    def drop(
        self, share: float = 1.0, types: Iterable[str] = (), *, project_id: int | None = None, seed: int = 0
    ) -> None:
        """Drops `share` (0..1) of the webhooks made from now on of `types` (none named: any type) of `project_id`
        (None: any project), chosen by a draw seeded with `seed` (the same webhooks in the same order drop the
        same way in every run). A dropped webhook is made and recorded, never sent, until `deliver_dropped`.
        Replaces the drops set before.

        Raises:
            InvalidRequest: `share` not in 0..1.
        """
        if not 0.0 <= share <= 1.0:
            raise InvalidRequest("share must be between 0 and 1")
        chosen = frozenset((types,) if isinstance(types, str) else types)
        self._drops = [_Hold(chosen, project_id, None, share, random.Random(seed))]

    def clear_drops(self) -> None:
        """Drops no more webhooks from now on (those dropped stay undelivered until `deliver_dropped`)."""
        self._drops.clear()

    @property
    def dropped(self) -> list[Webhook]:
        """The webhooks dropped and not yet delivered late, oldest first."""
        return [outgoing.webhook for outgoing in self._dropped.values()]

    async def deliver_dropped(self, *, project_id: int | None = None) -> list[WebhookDelivery]:
        """Sends the dropped webhooks (of one project, or all) late, oldest first, each as it was made (same
        bytes and signature, its follow-up too), each after the previous one's first attempt.

        Returns:
            Their first attempts, in order; retries go on in the background.
        """
        chosen = [i for i, out in self._dropped.items() if project_id in (None, out.webhook.project_id)]
        return [await self._start(self._dropped.pop(webhook_id)) for webhook_id in chosen]

    # --- waiting and closing --------------------------------------------------------------------------------

    async def settled(self, timeout_s: float) -> None:
        """Waits until every webhook's delivery is over (held webhooks are not being delivered).

        Raises:
            TimeoutError: some were still being retried after `timeout_s`.
        """
        async with asyncio.timeout(timeout_s):
            while self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stops every delivery and retry still going (and the follow-ups they were starting)."""
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # --- delivery -------------------------------------------------------------------------------------------

    async def _start(self, outgoing: _Outgoing) -> WebhookDelivery:
        first: asyncio.Future[WebhookDelivery] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._deliver(outgoing, first), name=f"webhook-{outgoing.webhook.webhook_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await first

    async def _deliver(self, outgoing: _Outgoing, first: asyncio.Future[WebhookDelivery]) -> None:
        loop = asyncio.get_running_loop()
        webhook = outgoing.webhook
        headers = {"Content-Type": "application/json", "Authorization": signature(webhook.body, outgoing.secret)}
        try:
            for attempt in itertools.count(1):
                started = loop.time()
                status, error = await self._attempt(webhook.url, webhook.body, headers)
                wait = self._schedule.wait_after(attempt)
                outcome: Outcome
                if status in SUCCESS_STATUSES:
                    outcome = "delivered"
                elif status in REJECTION_STATUSES:
                    outcome = "rejected"
                else:
                    outcome = "gave_up" if wait is None else "retry"
                record = WebhookDelivery(
                    webhook_id=webhook.webhook_id,
                    project_id=webhook.project_id,
                    order_id=webhook.order_id,
                    type=webhook.type,
                    attempt=attempt,
                    at=started,
                    status=status,
                    error=error,
                    outcome=outcome,
                    elapsed_s=loop.time() - started,
                    subscription_id=webhook.subscription_id,
                )
                self.deliveries.append(record)
                if not first.done():
                    first.set_result(record)
                if outcome != "retry":
                    await self._finished(outgoing, record)
                    return
                assert wait is not None
                await asyncio.sleep(wait * self._time_scale)
        finally:
            if not first.done():  # cancelled before the first attempt finished
                first.cancel()

    async def _finished(self, outgoing: _Outgoing, record: WebhookDelivery) -> None:
        # Background work: nobody else would see an exception, so it is logged here.
        try:
            if record.outcome == "delivered":
                if outgoing.then is not None:
                    await outgoing.then()
            elif self._on_final is not None:
                await self._on_final(record)
        except Exception:
            _log.exception("webhook_final_step_failed", webhook_id=record.webhook_id, outcome=record.outcome)

    async def _attempt(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int | None, str | None]:
        try:
            async with self._session.post(url, data=body, headers=headers, timeout=self._timeout) as answer:
                await answer.read()
                return answer.status, None
        except TimeoutError:
            return None, "timeout"
        except aiohttp.ClientError as exc:
            return None, f"{type(exc).__name__}: {exc}"
