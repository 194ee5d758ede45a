"""What the sweeper keeps in Redis per project: its progress, the orders the provider returned, what it reported.

- The progress (`core.keys.sweep_progress_key`, a hash): the window being swept and the offset of its next page
  (saved after every page, so a restart, or another replica taking the lease over, resumes there), the watermark
  (the end of the last window swept to the end), when the last sweep succeeded, the last error and when, when the
  next sweep is due, and who swept last. Written only while the sweeper's lease is held (`server/lua/
  sweep_progress.lua`).
- The orders seen (`core.keys.sweep_seen_key`, a sorted set by creation): every order the provider's search returned,
  so an order applied here that no sweep ever saw is reported as a mismatch.
- The reports (`core.keys.reconcile_reports_key`, a hash): order id -> what the sweeper could not settle
  (unresolved, mismatch, failed) and why; removed when a later sweep settles the order, trimmed with the order
  index. The operator's list (`python -m server reconcile status`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, cast

from core import scripts
from core.connections import RedisClient, bounded, reply_text
from core.errors import StoreUnavailable
from core.keys import reconcile_reports_key, sweep_progress_key, sweep_seen_key, sweeper_lease_key
from server.leases import Lease, LeaseLost

_WINDOW = ("window_from_ms", "window_until_ms", "offset")


@dataclass(frozen=True, slots=True)
class SweepProgress:
    """A project's sweep progress, as stored.

    Attributes:
        window_from_ms, window_until_ms: the creation-date window being swept (ms since the epoch); None when no
            sweep is under way (the last one finished, or none ever started).
        offset: the offset of the window's next page.
        watermark_ms: the end of the last window swept to its end; None before the first.
        last_success_ms: when the last sweep finished (0: never).
        next_due_ms: when the next periodic sweep is due (0: now).
        last_error, last_error_at_ms: why the last sweep that failed did, and when ("" and 0 after a success).
        holder: the lease holder that last started a sweep (host:pid:random).
        started_at_ms: when it started it.
    """

    window_from_ms: int | None = None
    window_until_ms: int | None = None
    offset: int = 0
    watermark_ms: int | None = None
    last_success_ms: int = 0
    next_due_ms: int = 0
    last_error: str = ""
    last_error_at_ms: int = 0
    holder: str = ""
    started_at_ms: int = 0

    @property
    def in_progress(self) -> bool:
        """A window was started and not finished (a sweep is under way, failed, or its holder died)."""
        return self.window_from_ms is not None and self.window_until_ms is not None

    @classmethod
    def parse(cls, raw: Mapping[str, str]) -> SweepProgress:
        """The progress from the hash's fields; a field that is not a number is taken as absent."""
        values: dict[str, Any] = {}
        for field in fields(cls):
            text = raw.get(field.name)
            if text is None:
                continue
            if field.name in ("last_error", "holder"):
                values[field.name] = text
            elif text.lstrip("-").isdigit():
                values[field.name] = int(text)
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: What a report says of an order.
UNRESOLVED = "unresolved"
MISMATCH = "mismatch"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Report:
    """An order the sweeper could not settle.

    Attributes:
        order_id: the provider's order id.
        result: `UNRESOLVED` (nobody says whose the order is), `MISMATCH` (this service and the provider disagree),
            `FAILED` (the order could not be turned into an event, e.g. a bundle the catalog does not know).
        why: what an operator needs to know.
        status: the order's status at the provider ("" when the provider does not know the order).
        player: the player when known, "" otherwise.
        created_at_ms: when the provider created the order (0: unknown).
        reported_at_ms: when the sweeper last reported it.
    """

    order_id: str
    result: str
    why: str
    status: str = ""
    player: str = ""
    created_at_ms: int = 0
    reported_at_ms: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, order_id: str, data: str) -> Report:
        try:
            raw = json.loads(data)
            return cls(
                order_id=order_id,
                result=str(raw["result"]),
                why=str(raw.get("why", "")),
                status=str(raw.get("status", "")),
                player=str(raw.get("player", "")),
                created_at_ms=int(raw.get("created_at_ms", 0)),
                reported_at_ms=int(raw.get("reported_at_ms", 0)),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls(order_id, "unreadable", f"the stored report cannot be read: {data[:80]!r}")


class SweepRecords:
    """Reads and writes a project's sweep records.

    Args:
        redis: a connected client, owned by the caller.
        timeout_s: upper bound of one call, retries included.
    """

    def __init__(self, redis: RedisClient, *, timeout_s: float) -> None:
        self._redis = redis
        self._timeout_s = timeout_s
        self._save = scripts.register(redis, "server", "sweep_progress.lua")

    async def _call(self, operation: Any) -> Any:
        return await bounded(operation, self._timeout_s, refused="a sweep record")

    async def progress(self, project_id: int) -> SweepProgress:
        """The project's progress (all defaults before its first sweep).

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        raw = await self._call(self._redis.hgetall(sweep_progress_key(project_id)))
        decoded = {reply_text(k): reply_text(v, "replace") for k, v in cast(dict[bytes, bytes], raw).items()}
        return SweepProgress.parse(decoded)

    async def _fenced(
        self, lease: Lease, project_id: int, *, delete: Sequence[str] = (), put: Mapping[str, str | int] = {}
    ) -> bool:
        args: list[str | int] = [lease.holder, len(delete), *delete]
        for name, value in put.items():
            args += [name, value]
        keys = [sweeper_lease_key(project_id), sweep_progress_key(project_id)]
        return bool(await self._call(self._save(keys=keys, args=args)))

    async def begin(self, lease: Lease, project_id: int, from_ms: int, until_ms: int, now_ms: int) -> None:
        """Records that the window [`from_ms`, `until_ms`] is being swept from offset 0.

        Raises:
            LeaseLost: the lease is not held. StoreUnavailable: Redis did not answer in time.
        """
        put: dict[str, str | int] = {"window_from_ms": from_ms, "window_until_ms": until_ms, "offset": 0}
        await self._held(lease, project_id, put={**put, "holder": lease.holder, "started_at_ms": now_ms})

    async def resume(self, lease: Lease, project_id: int, now_ms: int) -> None:
        """Records that this holder resumes the window under way.

        Raises:
            LeaseLost: the lease is not held. StoreUnavailable: Redis did not answer in time.
        """
        await self._held(lease, project_id, put={"holder": lease.holder, "started_at_ms": now_ms})

    async def advanced(self, lease: Lease, project_id: int, offset: int) -> None:
        """Records the offset of the window's next page.

        Raises:
            LeaseLost: the lease is not held. StoreUnavailable: Redis did not answer in time.
        """
        await self._held(lease, project_id, put={"offset": offset})

    async def finished(self, lease: Lease, project_id: int, until_ms: int, now_ms: int, next_due_ms: int) -> None:
        """Records a sweep that reached its window's end: the watermark moves to it, the window is cleared.

        Raises:
            LeaseLost: the lease is not held. StoreUnavailable: Redis did not answer in time.
        """
        put = {"watermark_ms": until_ms, "last_success_ms": now_ms, "next_due_ms": next_due_ms}
        await self._held(lease, project_id, delete=(*_WINDOW, "last_error", "last_error_at_ms"), put=put)

    async def failed(self, lease: Lease, project_id: int, error: str, now_ms: int, next_due_ms: int) -> None:
        """Records why a sweep failed; its window and offset are kept for the next attempt. Nothing is written
        when the lease is lost, or when Redis does not answer (the sweep failed already)."""
        put: dict[str, str | int] = {"last_error": error[:500], "last_error_at_ms": now_ms, "next_due_ms": next_due_ms}
        with contextlib.suppress(StoreUnavailable):
            await self._fenced(lease, project_id, put=put)

    async def _held(
        self, lease: Lease, project_id: int, *, delete: Sequence[str] = (), put: Mapping[str, str | int] = {}
    ) -> None:
        if not await self._fenced(lease, project_id, delete=delete, put=put):
            raise LeaseLost("another replica holds the lease: the progress was not saved")

    async def remember(self, project_id: int, orders: Iterable[tuple[str, int]]) -> None:
        """Records that the provider's search returned these (order id, creation ms).

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        mapping = dict(orders)
        if mapping:
            await self._call(self._redis.zadd(sweep_seen_key(project_id), mapping))

    async def seen(self, project_id: int, order_ids: Sequence[str]) -> set[str]:
        """Which of `order_ids` a sweep saw (one round trip).

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        if not order_ids:
            return set()
        scores = await self._call(self._redis.zmscore(sweep_seen_key(project_id), list(order_ids)))
        return {order_id for order_id, score in zip(order_ids, scores, strict=True) if score is not None}

    async def report(self, project_id: int, reports: Sequence[Report]) -> None:
        """Keeps these reports (replacing earlier ones of the same orders).

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        if reports:
            mapping = {report.order_id: report.to_json() for report in reports}
            await self._call(self._redis.hset(reconcile_reports_key(project_id), mapping=mapping))  # type: ignore[arg-type]

    async def settle(self, project_id: int, order_ids: Sequence[str]) -> None:
        """Drops the reports of orders a sweep settled.

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        if order_ids:
            await self._call(self._redis.hdel(reconcile_reports_key(project_id), *order_ids))

    async def reports(self, project_id: int) -> list[Report]:
        """Every report of the project, oldest order first.

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        raw = await self._call(self._redis.hgetall(reconcile_reports_key(project_id)))
        reports = [
            Report.from_json(reply_text(order_id, "replace"), reply_text(data, "replace"))
            for order_id, data in cast(dict[bytes, bytes], raw).items()
        ]
        return sorted(reports, key=lambda report: (report.created_at_ms, report.order_id))

    async def trim(self, project_id: int, before_ms: int) -> int:
        """Forgets the orders seen, and the reports made, before `before_ms`; returns how many entries went.

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        removed = int(
            await self._call(self._redis.zremrangebyscore(sweep_seen_key(project_id), "-inf", f"({before_ms}"))
        )
        stale = [report.order_id for report in await self.reports(project_id) if report.reported_at_ms < before_ms]
        await self.settle(project_id, stale)
        return removed + len(stale)
