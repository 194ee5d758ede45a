"""The traffic of the scale-out and failover runs, as the service's callers send it, retries included.

- `Webhooks`: signed `order_paid` webhooks, each order delivered twice at once, through two different gateways,
  each copy sent again after any answer but 204 until it gets one (as Xsolla retries a webhook that was not
  acknowledged);
- `Grants`: Grant calls with an idempotency key each, sent again with the same key after a retryable error (as the
  client library says to), some replayed on another replica once they succeeded;
- `Checks`: CheckEntitlement calls spread over the replicas;
- `OrderStreams`: GetOrderStatus streams on every replica, each opened again after a retryable error, until the
  order is done.

Every answer is counted in a `Tally` with its time, so the unavailability a kind of caller saw can be measured:
from its first failure to its last, and until its first success after that. The clients are built without the
client library's own retries (`retry_policy=None`), so every UNAVAILABLE the service answers is seen here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import aiohttp

from entitlements import AsyncEntitlementsClient
from entitlements.errors import EntitlementsError
from entitlements.v1 import entitlements_pb2 as pb
from providers.xsolla.signature import sign

#: Answers worth sending again: the gateway's 503 (and a request that could not be sent), gRPC's UNAVAILABLE and
#: a deadline that passed. Anything else that is not a success is unexpected.
RETRYABLE = frozenset({"503", "connection", "UNAVAILABLE", "DEADLINE_EXCEEDED"})
#: The pause before a request that failed is sent again.
RETRY_PAUSE_S = 0.1
#: The sku an order's first line grants (its quantity varies); the second line grants `COIN` x 3.
GEM, COIN = "gem", "coin"
#: The sku the Grant calls grant.
GOLD = "rpc_gold"


@dataclasses.dataclass
class Tally:
    """Every answer one kind of request got, with when (time.monotonic())."""

    kind: str
    answers: Counter[str] = dataclasses.field(default_factory=Counter)
    failures: list[float] = dataclasses.field(default_factory=list)
    successes: list[float] = dataclasses.field(default_factory=list)

    def record(self, answer: str, ok: bool) -> None:
        self.answers[answer] += 1
        (self.successes if ok else self.failures).append(time.monotonic())

    @property
    def unexpected(self) -> dict[str, int]:
        """Answers that are neither a success nor retryable (a 500, UNKNOWN, INTERNAL ...)."""
        return {a: n for a, n in self.answers.items() if a not in RETRYABLE and a not in ("204", "OK", "replayed")}

    def outage(self, since: float) -> dict[str, Any]:
        """What this kind saw from `since` (the kill) on: failures, the seconds from the first failure to the last,
        and the seconds from `since` to the first success after the last failure."""
        failed = [t for t in self.failures if t >= since]
        if not failed:
            return {"failures": 0, "unavailable_s": 0.0, "recovered_after_s": 0.0}
        last = max(failed)
        after = [t for t in self.successes if t > last]
        return {
            "failures": len(failed),
            "unavailable_s": round(last - min(failed), 3),
            "recovered_after_s": round(min(after) - since, 3) if after else None,
        }


@dataclasses.dataclass(frozen=True)
class Order:
    """One order: its number (Xsolla's order id), its player and its lines."""

    number: int
    player: str

    @property
    def lines(self) -> list[tuple[str, int]]:
        return [(GEM, 1 + self.number % 7), (COIN, 3)]

    def body(self, project_id: int) -> bytes:
        """The order's `order_paid` webhook (combined mode, a live payment), shaped like Xsolla's."""
        items = [
            {"sku": sku, "type": "virtual_good", "is_pre_order": False, "quantity": quantity, "amount": "1.0000"}
            for sku, quantity in self.lines
        ]
        document = {
            "items": items,
            "notification_type": "order_paid",
            "order": {"id": self.number, "mode": "default", "currency_type": "real", "currency": "USD",
                      "amount": "2.0000", "status": "paid", "platform": "xsolla", "invoice_id": str(self.number)},
            "user": {"external_id": self.player, "email": "player@example.com", "country": "DE"},
            "billing": {
                "notification_type": "payment",
                "settings": {"project_id": project_id, "merchant_id": 887981},
                "purchase": {"total": {"currency": "USD", "amount": 2.0}},
                "transaction": {"id": self.number, "dry_run": 0, "payment_date": "2026-07-31T09:10:23+03:00"},
            },
        }  # fmt: skip
        return json.dumps(document, separators=(",", ":")).encode()


def player_of(number: int, players: int) -> str:
    return f"player-{number % players:05d}"


class Webhooks:
    """Delivers orders through the gateways, each twice at once, each copy until it is acknowledged (204).

    Args:
        urls: the gateways' webhook URLs (the two copies of order n go to gateways n and n + 1).
        secret: the project's webhook secret.
        project_id: the project the webhooks name.
        http: the session to post with.
        give_up_s: a copy still not acknowledged after this long is given up (and counted in `given_up`).
    """

    def __init__(
        self, urls: Sequence[str], secret: str, project_id: int, http: aiohttp.ClientSession, give_up_s: float = 120.0
    ) -> None:
        self.urls = list(urls)
        self.secret = secret
        self.project_id = project_id
        self.http = http
        self.give_up_s = give_up_s
        self.tally = Tally("webhook")
        #: Orders at least one copy of which was acknowledged.
        self.acknowledged: set[Order] = set()
        self.given_up: list[Order] = []

    async def deliver(self, order: Order) -> None:
        """Sends both copies of `order` at once, each until a 204 (or `give_up_s`)."""
        body = order.body(self.project_id)
        first = order.number % len(self.urls)
        copies = [self.urls[first], self.urls[(first + 1) % len(self.urls)]]
        await asyncio.gather(*(self._until_acknowledged(order, url, body) for url in copies))

    async def _until_acknowledged(self, order: Order, url: str, body: bytes) -> None:
        headers = {"Authorization": sign(body, self.secret), "Content-Type": "application/json"}
        deadline = time.monotonic() + self.give_up_s
        while True:
            try:
                async with self.http.post(url, data=body, headers=headers) as answer:
                    await answer.read()
                    status = str(answer.status)
            except (aiohttp.ClientError, TimeoutError):
                status = "connection"
            self.tally.record(status, status == "204")
            if status == "204":
                self.acknowledged.add(order)
                return
            if time.monotonic() > deadline:
                self.given_up.append(order)
                return
            await asyncio.sleep(RETRY_PAUSE_S)


def answer_of(exc: EntitlementsError) -> str:
    """An error's gRPC status code name ("connection" when it carried none)."""
    return exc.code.name if exc.code is not None else "connection"


@dataclasses.dataclass(frozen=True)
class GrantCall:
    """One logical grant: its number, player, quantity and idempotency key."""

    number: int
    player: str
    quantity: int
    key: str


class Grants:
    """Grant calls, each retried with its idempotency key until it succeeds; every `replay_every`th is then sent
    again on the next replica, which must answer it as a replay of the same result.

    Args:
        clients: one client per replica.
        run_id: makes the idempotency keys of this run unique.
        give_up_s: a grant still failing after this long is given up (`given_up`).
    """

    def __init__(
        self, clients: Sequence[AsyncEntitlementsClient], run_id: str, replay_every: int = 4, give_up_s: float = 120.0
    ) -> None:
        self.clients = list(clients)
        self.run_id = run_id
        self.replay_every = replay_every
        self.give_up_s = give_up_s
        self.tally = Tally("grant")
        #: Grants that returned OK (first calls or their retries), by key.
        self.granted: dict[str, GrantCall] = {}
        self.given_up: list[GrantCall] = []
        #: Replays on another replica whose answer was not the first one's, replayed (should stay empty).
        self.bad_replays: list[str] = []

    def call(self, number: int, players: int) -> GrantCall:
        return GrantCall(number, player_of(number, players), 1 + number % 3, f"{self.run_id}-grant-{number}")

    async def grant(self, call: GrantCall) -> None:
        first = await self._until_ok(call, call.number % len(self.clients))
        if first is None or call.number % self.replay_every:
            return
        again = await self._until_ok(call, (call.number + 1) % len(self.clients))
        if again is not None and (not again.replayed or again.entitlement.quantity != first.entitlement.quantity):
            self.bad_replays.append(call.key)

    async def _until_ok(self, call: GrantCall, replica: int) -> pb.GrantResponse | None:
        deadline = time.monotonic() + self.give_up_s
        while True:
            try:
                response = await self.clients[replica].grant(
                    call.player, GOLD, quantity=call.quantity, idempotency_key=call.key, reason="load"
                )
            except EntitlementsError as exc:
                self.tally.record(answer_of(exc), False)
                if answer_of(exc) not in RETRYABLE or time.monotonic() > deadline:
                    self.given_up.append(call)
                    return None
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            self.tally.record("replayed" if response.replayed else "OK", True)
            self.granted[call.key] = call
            return response


class Checks:
    """CheckEntitlement calls on the replicas in turn, for the players in turn."""

    def __init__(self, clients: Sequence[AsyncEntitlementsClient], players: int) -> None:
        self.clients = list(clients)
        self.players = players
        self.tally = Tally("check")
        self._turn = itertools.count()

    async def check_one(self) -> None:
        number = next(self._turn)
        try:
            await self.clients[number % len(self.clients)].check_entitlement(
                player_of(number, self.players), GEM if number % 2 else GOLD
            )
        except EntitlementsError as exc:
            self.tally.record(answer_of(exc), False)
            await asyncio.sleep(RETRY_PAUSE_S)
            return
        self.tally.record("OK", True)


@dataclasses.dataclass
class StreamRecord:
    """What one GetOrderStatus stream (and its re-openings) saw."""

    order: Order
    replica: int
    statuses: list[str] = dataclasses.field(default_factory=list)
    reopened: int = 0
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    done: bool = False


class OrderStreams:
    """GetOrderStatus streams without a token (webhooks are their only source), one per order and replica, each
    followed until its order is done (DONE with the items granted), opened again after a retryable error."""

    def __init__(self, clients: Sequence[AsyncEntitlementsClient], give_up_s: float = 120.0) -> None:
        self.clients = list(clients)
        self.give_up_s = give_up_s
        self.tally = Tally("stream")
        self.records: list[StreamRecord] = []

    async def follow(self, order: Order, replica: int) -> StreamRecord:
        record = StreamRecord(order, replica)
        self.records.append(record)
        deadline = time.monotonic() + self.give_up_s
        while not record.done and time.monotonic() < deadline:
            stream = self.clients[replica].get_order_status(str(order.number), order.player)
            seen: set[str] = set()  # within one opening, each status at most once
            try:
                async for update in stream:
                    status = f"{pb.OrderStatus.Name(update.status)}{'+granted' if update.entitlements_granted else ''}"
                    if status in seen:
                        record.errors["repeated"] += 1
                    seen.add(status)
                    record.statuses.append(status)
                    if update.status == pb.ORDER_STATUS_DONE and update.entitlements_granted:
                        record.done = True
                if not record.done:
                    record.errors["ended"] += 1
                self.tally.record("OK", record.done)
            except EntitlementsError as exc:
                record.errors[answer_of(exc)] += 1
                self.tally.record(answer_of(exc), False)
                if answer_of(exc) not in RETRYABLE:
                    break
            finally:
                await stream.aclose()
            if not record.done:
                record.reopened += 1
                await asyncio.sleep(RETRY_PAUSE_S)
        return record
