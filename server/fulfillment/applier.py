"""`Fulfillment`: applies events to the store, one at a time or a batch at a time (see `server.fulfillment`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.connections import reply_text
from core.errors import StoreUnavailable
from core.limits import MAX_CONSUMABLE_TOTAL, quantity_problem
from core.projects import SANDBOX_GRANT, SANDBOX_IGNORE, Projects
from entitlements.v1 import events_pb2
from server.catalog import Catalogs
from server.errors import InvalidEvent
from server.fulfillment.events import (
    BUNDLE,
    ET,
    ORIGIN_NAMES,
    PROVIDER,
    RECONCILER,
    SUBSCRIPTION_ACTIONS,
    VIRTUAL_CURRENCY,
    Applied,
    identifier,
    subscription_change,
    totals,
    transaction_fields,
    type_label,
)
from server.order_effects import OrderEffect, OrderEffects
from server.status_channel import RECONCILIATION_SOURCE, WEBHOOK_SOURCE, OrderState
from server.store import EntitlementStore, OrderLine, OrderOutcome, ScriptCall, SubscriptionOutcome, compact_json


@dataclass(frozen=True, slots=True)
class _Plan:
    """An event made ready to write: the write, and what to make of its reply."""

    label: str
    event: events_pb2.WebhookEvent
    call: ScriptCall
    user_id: str
    order_id: str = ""  # for order events
    policy: str = ""
    lines: list[dict[str, object]] | None = None  # an order's lines as the event lists them


class Fulfillment:
    """Applies events to the store, one at a time (`apply`) or a batch at a time (`apply_many`).

    Args:
        store: the entitlement store.
        catalogs: each project's catalog (sku -> kind and period).
        projects: the projects served, for their sandbox policy (a project it does not know: "ignore").
        effects: records applied orders in the order index and publishes their states (`server.order_effects`);
            None does neither (tools).
    """

    def __init__(
        self, store: EntitlementStore, catalogs: Catalogs, projects: Projects, effects: OrderEffects | None
    ) -> None:
        self._store = store
        self._catalogs = catalogs
        self._projects = projects
        self._effects = effects

    def _sandbox_policy(self, event: events_pb2.WebhookEvent) -> str:
        """The sandbox policy that applies to `event`: "" for a live event, else its project's policy."""
        if not event.sandbox:
            return ""
        project = self._projects.get(event.project_id)
        return project.sandbox if project is not None else SANDBOX_IGNORE

    async def apply(self, event: events_pb2.WebhookEvent) -> Applied:
        """Applies one event in its project, once per event id.

        Raises:
            InvalidEvent: the event lacks what applying it needs (project, event id, player, order or subscription
                id) or carries an invalid order line.
            SkuNotInCatalog: an order line's sku is unknown to the project's catalog, even after a refresh.
            FailedPrecondition: an order line would pass the store's quantity or expiry limit.
            StoreUnavailable: Redis did not answer in time (the event may be retried); `NotDurable` when the write
                was made but is not durable yet.
        """
        result = (await self.apply_many([event]))[0]
        if isinstance(result, Exception):
            raise result
        return result

    async def apply_many(self, events: Sequence[events_pb2.WebhookEvent]) -> list[Applied | Exception]:
        """Applies a batch of events, each as `apply` would, with one round trip and one durability wait per Redis
        node for all their writes, then one round trip per project for the order index and the publications.

        One player's events are written in the given order (their keys share a slot, so a node and a connection).
        Events of different players are independent: one that fails does not fail the others. When an event
        fails for want of Redis before its write was sent, the player's later events in the batch are not written
        either (they fail the same way), so that none overtakes it.

        Returns:
            Per event, what applying it did, or why it failed (the exceptions `apply` raises, as objects).
        """
        results: list[Applied | Exception | None] = [None] * len(events)
        plans: list[tuple[int, _Plan]] = []
        held_back: dict[tuple[int, str], Exception] = {}
        for position, event in enumerate(events):
            player = (event.project_id, event.user_id)
            if player in held_back:
                results[position] = held_back[player]
                continue
            try:
                plan = await self._plan(event)
            except StoreUnavailable as exc:
                held_back[player] = exc
                results[position] = exc
                continue
            except Exception as exc:
                results[position] = exc
                continue
            if isinstance(plan, Applied):
                results[position] = plan
            else:
                plans.append((position, plan))
        replies = await self._store.write_many([plan.call for _, plan in plans])
        orders: list[tuple[int, _Plan, OrderOutcome]] = []
        for (position, plan), reply in zip(plans, replies, strict=True):
            try:
                if plan.order_id:
                    orders.append((position, plan, self._store.order_outcome(reply, plan.order_id)))
                else:
                    results[position] = self._concluded(plan, reply)
            except Exception as exc:
                results[position] = exc
        for position, result in zip([p for p, _, _ in orders], await self._settle_orders(orders), strict=True):
            results[position] = result
        return [result if result is not None else RuntimeError("not applied") for result in results]

    async def _plan(self, event: events_pb2.WebhookEvent) -> _Plan | Applied:
        """The write an event makes, or what it did when it writes nothing (an event type not applied)."""
        label = type_label(event.type)
        if label == "unknown":
            return Applied(label, "ignored")
        event_id = identifier("event_id", event.event_id)
        if event.project_id <= 0:
            raise InvalidEvent(f"event {event_id} names no project")
        user_id = identifier("user_id", event.user_id)
        actor = f"{event.provider or 'provider'}-webhook" if event.origin == PROVIDER else RECONCILER
        if event.type in (ET.EVENT_TYPE_ORDER_PAID, ET.EVENT_TYPE_ORDER_CANCELED):
            return await self._order_plan(label, event, event_id, user_id, actor)
        policy = self._sandbox_policy(event)
        if event.type in SUBSCRIPTION_ACTIONS:
            if event.WhichOneof("payload") != "subscription":
                raise InvalidEvent(f"{label} event {event_id} carries no subscription")
            sub = event.subscription
            identifier("subscription.subscription_id", sub.subscription_id)
            action = SUBSCRIPTION_ACTIONS[event.type]
            call = self._store.subscription_call(
                event.project_id, user_id, event_id, actor, action, subscription_change(sub)
            )
            return _Plan(label, event, call, user_id, policy=policy)
        call = self._store.event_call(event.project_id, user_id, event_id, transaction_fields(event, event_id, actor))
        return _Plan(label, event, call, user_id, policy=policy)

    def _concluded(self, plan: _Plan, reply: Any) -> Applied:
        """What a subscription or transaction event did, from its write's reply (raised when an error)."""
        if isinstance(reply, Exception):
            raise reply
        if plan.event.type in SUBSCRIPTION_ACTIONS:
            outcome = SubscriptionOutcome.from_reply(reply)
            return Applied(plan.label, outcome.result, sandbox_policy=plan.policy, note=outcome.why)
        result = "applied" if reply_text(reply) == "applied" else "replayed"
        return Applied(plan.label, result, sandbox_policy=plan.policy)

    async def _order_plan(
        self, label: str, event: events_pb2.WebhookEvent, event_id: str, user_id: str, actor: str
    ) -> _Plan:
        project_id = event.project_id
        if event.WhichOneof("payload") != "order":
            raise InvalidEvent(f"{label} event {event_id} carries no order")
        order = event.order
        order_id = identifier("order.order_id", order.order_id)
        lines: list[dict[str, object]] = [
            {"sku": line.sku, "type": line.type, "quantity": line.quantity, "amount": line.amount}
            for line in order.lines
        ]
        record = {
            "user_id": user_id,
            "provider": event.provider,
            "project_id": str(event.project_id),
            "sandbox": "1" if event.sandbox else "0",
            "currency": order.currency,
            "amount": order.amount,
            "invoice_id": order.invoice_id,
            "transaction_id": order.transaction_id,
        }
        record["granted_by" if event.type == ET.EVENT_TYPE_ORDER_PAID else "canceled_by"] = ORIGIN_NAMES.get(
            event.origin, "webhook"
        )
        policy = self._sandbox_policy(event)
        store = self._store
        if event.type == ET.EVENT_TYPE_ORDER_PAID and policy not in ("", SANDBOX_GRANT):
            # A test payment the project does not grant: recorded, lines listed, nothing granted.
            record["lines"] = compact_json(lines)
            reason = (
                f"order_paid {order_id}: sandbox order, nothing granted "
                f"(the sandbox policy of project {event.project_id} is {policy!r})"
            )
            call = store.order_paid_call(
                project_id, user_id, order_id, event_id, actor, [], record, withheld="sandbox", withheld_reason=reason
            )
        elif event.type == ET.EVENT_TYPE_ORDER_PAID:
            record["lines"] = compact_json(lines)
            grantable = await self._grantable_lines(project_id, order)
            call = store.order_paid_call(project_id, user_id, order_id, event_id, actor, grantable, record)
        else:
            record["canceled_lines"] = compact_json(lines)
            call = store.order_canceled_call(project_id, user_id, order_id, event_id, actor, record)
        return _Plan(label, event, call, user_id, order_id, policy, lines)

    async def _settle_orders(self, orders: Sequence[tuple[int, _Plan, OrderOutcome]]) -> list[Applied | Exception]:
        """After the orders' writes: their states recorded and published (all in one round trip per project), and
        for a webhook that finds its order reconciled, how its lines differ."""
        if not orders:
            return []
        states: list[OrderState] = []
        differs: list[tuple[str, str]] = []
        for _, plan, outcome in orders:
            event = plan.event
            states.append(
                OrderState(
                    project_id=event.project_id,
                    order_id=plan.order_id,
                    user_id=plan.user_id,
                    status=outcome.status,
                    entitlements_granted=outcome.entitlements_granted,
                    observed_at_ms=outcome.updated_at_ms,
                    source=WEBHOOK_SOURCE if event.origin == PROVIDER else RECONCILIATION_SOURCE,
                    withheld=outcome.withheld,
                )
            )
            paid = event.type == ET.EVENT_TYPE_ORDER_PAID
            if paid and event.origin == PROVIDER and outcome.result == "replayed":
                differs.append(
                    await self._reconciled_differently(event.project_id, plan.user_id, plan.order_id, plan.lines or [])
                )
            else:
                differs.append(("", ""))
        # Both after the commit; a failure of either fails the event, which is delivered again and replays (the
        # index write is idempotent, a publication repeated is harmless).
        failures: list[Exception | None] = [None] * len(orders)
        if self._effects is not None:
            failures = await self._effects.settle(
                [
                    OrderEffect(
                        state,
                        authoritative=plan.event.origin == PROVIDER,
                        applied=plan.event.type == ET.EVENT_TYPE_ORDER_PAID and outcome.status == "paid",
                    )
                    for state, (_, plan, outcome) in zip(states, orders, strict=True)
                ]
            )
        results: list[Applied | Exception] = []
        for (_, plan, outcome), state, (by, difference), failure in zip(orders, states, differs, failures, strict=True):
            if failure is not None:
                results.append(failure)
                continue
            results.append(
                Applied(
                    plan.label,
                    outcome.result,
                    state,
                    outcome.lines_changed,
                    outcome.kind_conflicts,
                    plan.policy,
                    "",
                    by,
                    difference,
                    outcome,
                )
            )
        return results

    async def _reconciled_differently(
        self, project_id: int, user_id: str, order_id: str, lines: list[dict[str, object]]
    ) -> tuple[str, str]:
        """For the late webhook of an order reconciliation applied: (who applied it, how the webhook's lines differ
        from what was applied), or ("", "") when they agree or the order was not reconciled. The provider's record
        may leave out lines its webhook lists (bonus items): nothing more is granted, the operator is told."""
        stored = await self._store.order(project_id, user_id, order_id) or {}
        by = stored.get("granted_by", "")
        if by not in ORIGIN_NAMES.values() or by == ORIGIN_NAMES[PROVIDER]:
            return "", ""
        try:
            applied = totals(json.loads(stored.get("lines", "[]")))
        except (ValueError, TypeError, AttributeError):
            applied = {}
        webhook = totals(lines)
        if applied == webhook:
            return "", ""
        return by, f"applied {applied or 'nothing'}; the webhook lists {webhook}"

    async def _grantable_lines(self, project_id: int, order: events_pb2.OrderEvent) -> list[OrderLine]:
        lines: list[OrderLine] = []
        for index, line in enumerate(order.lines):
            if line.type == BUNDLE:
                continue  # recorded, not granted: its contents are lines of their own
            sku = identifier(f"order.lines[{index}].sku", line.sku)
            problem = quantity_problem(line.quantity, MAX_CONSUMABLE_TOTAL)
            if problem is not None:
                raise InvalidEvent(f"order.lines[{index}].quantity {problem}")
            if line.type == VIRTUAL_CURRENCY:
                item = await self._catalogs.known(project_id, sku)
            else:
                item = await self._catalogs.for_order(project_id, sku)
            if item is None:
                lines.append(OrderLine(sku, 0, 0, line.quantity))
            else:
                lines.append(OrderLine(sku, item.kind, item.period_ms, line.quantity, item.period_months))
        return lines
