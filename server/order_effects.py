"""What follows an applied order event once its write is committed: the order index records whose order it is
(`server.reconcile.index`), and the order's state is published for GetOrderStatus (`server.status_channel`).

For a batch of events, every such command of one project goes in one round trip: the index's keys and the status
channel share the project's hash tag (`core.keys`), so on Redis Cluster they are on one node too. A command that
the pipeline could not run as sent (the index script not loaded after a restart) is done again on its own, through
the index's and publisher's own methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.connections import RedisClient, bounded
from core.durability import on_one_connection
from core.errors import StoreUnavailable
from core.keys import order_players_key
from server.reconcile.index import AUTHORITATIVE, CLAIM, OrderIndex
from server.status_channel import OrderState, OrderStatusPublisher


@dataclass(frozen=True, slots=True)
class OrderEffect:
    """What one applied order event asks to be recorded and published.

    Attributes:
        state: the order's state after the event (published).
        authoritative: the event is a signed webhook (it says whose the order is with authority), else a
            reconciliation's claim.
        applied: its order_paid is applied (the index remembers when).
    """

    state: OrderState
    authoritative: bool
    applied: bool


class OrderEffects:
    """Records and publishes applied order events.

    Args:
        redis: the client of `index` and `publisher`, owned by the caller.
        index: the order index; None records nothing (tools, benchmarks).
        publisher: the order-status publisher; None publishes nothing.
        timeout_s: the upper bound of one round trip.
    """

    def __init__(
        self,
        redis: RedisClient,
        index: OrderIndex | None,
        publisher: OrderStatusPublisher | None,
        *,
        timeout_s: float,
    ) -> None:
        self._redis = redis
        self._index = index
        self._publisher = publisher
        self._timeout_s = timeout_s

    async def settle(self, effects: Sequence[OrderEffect]) -> list[Exception | None]:
        """Records and publishes every effect, those of one project in one round trip, in the given order.

        Returns:
            Per effect, None when done, or the failure (`StoreUnavailable` when Redis did not answer or refused).
        """
        outcome: list[Exception | None] = [None] * len(effects)
        if self._index is None and self._publisher is None:
            return outcome
        by_project: dict[int, list[int]] = {}
        for position, effect in enumerate(effects):
            by_project.setdefault(effect.state.project_id, []).append(position)
        for project_id, positions in by_project.items():
            commands: list[tuple[Any, ...]] = []
            for position in positions:
                commands.extend(self._commands(effects[position]))
            try:
                replies = await bounded(
                    on_one_connection(self._redis, order_players_key(project_id), commands), self._timeout_s
                )
            except Exception as exc:  # the connection failed: none of them is known to be done
                failure = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(f"Redis refused: {exc}")
                for position in positions:
                    outcome[position] = failure
                continue
            per_effect = len(commands) // len(positions)
            for n, position in enumerate(positions):
                mine = replies[n * per_effect : (n + 1) * per_effect]
                if any(isinstance(reply, Exception) for reply in mine):
                    index_failed = self._index is not None and isinstance(mine[0], Exception)
                    publish_failed = self._publisher is not None and isinstance(mine[-1], Exception)
                    outcome[position] = await self._again(effects[position], index_failed, publish_failed)
        return outcome

    def _commands(self, effect: OrderEffect) -> list[tuple[Any, ...]]:
        state = effect.state
        commands: list[tuple[Any, ...]] = []
        if self._index is not None:
            commands.append(
                self._index.record_command(
                    state.project_id,
                    state.order_id,
                    state.user_id,
                    authority=AUTHORITATIVE if effect.authoritative else CLAIM,
                    applied=effect.applied,
                    now_ms=state.observed_at_ms,
                )
            )
        if self._publisher is not None:
            commands.append(self._publisher.publish_command(state))
        return commands

    async def _again(self, effect: OrderEffect, index: bool, publish: bool) -> Exception | None:
        """Does again, one by one, what the pipeline could not: through the index's own method (which loads its
        script when the store lost it) and the publisher's."""
        state = effect.state
        try:
            if index and self._index is not None:
                await self._index.record(
                    state.project_id,
                    state.order_id,
                    state.user_id,
                    authority=AUTHORITATIVE if effect.authoritative else CLAIM,
                    applied=effect.applied,
                    now_ms=state.observed_at_ms,
                )
            if publish and self._publisher is not None:
                await bounded(self._publisher.publish(state), self._timeout_s)
        except Exception as exc:
            return exc
        return None
