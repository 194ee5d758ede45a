"""The dead-letter streams: event-stream entries that kept failing, set aside for an operator.

Each partition of each project's event log has one (`EventKeys.dead_letters`, same hash tag as its event stream);
an operator lists, replays and discards them per project. A dead
letter keeps the entry's fields (`event`, `raw`, `type`) and adds `original_id`, `error`, `deliveries`,
`consumer` and `dead_lettered_at_ms`. Moving an entry there acknowledges it in the same script; replaying one
appends its original fields to the event stream as a new entry (plus `replay_of`) and deletes the dead letter,
also in one script. The event keeps its event id, so a replay of an event that had in fact been applied changes
nothing. `python -m server dead-letters ...` drives these operations.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from core import scripts
from core.connections import RedisClient, reply_text
from core.keys import CONSUMER_GROUP, EventKeys
from entitlements.v1 import events_pb2

# Dead letters keep entries as they were appended, bad bytes included: listing them must not fail on those.
_lenient_text = functools.partial(reply_text, errors="replace")


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter, as an operator sees it."""

    project_id: int
    partition: int
    entry_id: str
    original_id: str
    type: str
    error: str
    deliveries: int
    dead_lettered_at_ms: int
    event_id: str
    user_id: str

    def as_dict(self) -> dict[str, str | int]:
        return {
            "project_id": self.project_id,
            "partition": self.partition,
            "id": self.entry_id,
            "original_id": self.original_id,
            "type": self.type,
            "event_id": self.event_id,
            "user_id": self.user_id,
            "error": self.error,
            "deliveries": self.deliveries,
            "dead_lettered_at_ms": self.dead_lettered_at_ms,
        }


@dataclass(frozen=True)
class Replayed:
    """A dead letter put back on its event stream."""

    project_id: int
    partition: int
    dead_letter_id: str
    new_entry_id: str


class DeadLetters:
    """Moves entries to the dead-letter streams, and lists, replays or discards those of a project.

    Args:
        redis: a connected client, owned by the caller.
        partitions: the event log's partition count (`ENTITLEMENTS_EVENT_PARTITIONS`).
    """

    def __init__(self, redis: RedisClient, partitions: int) -> None:
        self._redis = redis
        self.partitions = partitions
        self._move = scripts.register(redis, "server", "dead_letter.lua")
        self._replay = scripts.register(redis, "server", "replay_dead_letter.lua")

    async def move(self, keys: EventKeys, entry_id: str, consumer: str, error: str, deliveries: int) -> str | None:
        """Moves a pending entry held by `consumer` to the dead letters and acknowledges it, atomically.

        Returns:
            The dead-letter entry id, or None if `consumer` no longer holds the entry (another consumer claimed
            it, or it was acknowledged).
        """
        reply = await self._move(
            keys=[keys.stream, keys.dead_letters],
            args=[CONSUMER_GROUP, entry_id, consumer, error[:2000], deliveries, int(time.time() * 1000)],
        )
        return None if reply is None else _lenient_text(reply)

    def keys_of(self, project_id: int) -> list[EventKeys]:
        """The keys of every partition of a project's event log."""
        return [EventKeys(project_id, p) for p in range(self.partitions)]

    async def read(self, project_id: int, count: int = 100) -> list[DeadLetter]:
        """The oldest `count` dead letters of each partition of a project, oldest first within a partition."""
        letters: list[DeadLetter] = []
        for keys in self.keys_of(project_id):
            rows: Any = await self._redis.xrange(keys.dead_letters, count=count)
            for entry_id, fields in rows or []:
                letters.append(_dead_letter(keys, _lenient_text(entry_id), fields or {}))
        return letters

    async def replay(self, project_id: int, entry_id: str | None) -> list[Replayed]:
        """Replays one dead letter of a project (by its id, in whichever partition holds it) or, with None, all
        of them, each onto the event stream it came from.

        Returns:
            What was replayed; empty if no such dead letter exists.
        """
        replayed: list[Replayed] = []
        for keys in self.keys_of(project_id):
            ids = [entry_id] if entry_id is not None else [_lenient_text(i) for i in await self._ids(keys)]
            for dead_id in ids:
                new_id = await self._replay(keys=[keys.dead_letters, keys.stream], args=[dead_id])
                if new_id is not None:
                    replayed.append(Replayed(keys.project_id, keys.partition, dead_id, _lenient_text(new_id)))
        return replayed

    async def discard(self, project_id: int, entry_id: str | None) -> int:
        """Deletes one dead letter of a project (by id) or, with None, all of them, for events that must never be
        applied.

        Returns:
            How many were deleted.
        """
        deleted = 0
        for keys in self.keys_of(project_id):
            if entry_id is not None:
                deleted += int(await self._redis.xdel(keys.dead_letters, entry_id))
            else:
                ids = await self._ids(keys)
                if ids:
                    deleted += int(await self._redis.xdel(keys.dead_letters, *ids))
        return deleted

    async def waiting(self, keys: EventKeys) -> int:
        """How many dead letters a partition holds."""
        return int(await self._redis.xlen(keys.dead_letters))

    async def _ids(self, keys: EventKeys) -> list[bytes | str]:
        rows: Any = await self._redis.xrange(keys.dead_letters)
        return [entry_id for entry_id, _ in rows or []]


def _dead_letter(keys: EventKeys, entry_id: str, raw: dict[bytes, bytes]) -> DeadLetter:
    fields = {_lenient_text(k): v for k, v in raw.items()}
    event_id = user_id = ""
    try:
        event = events_pb2.WebhookEvent.FromString(fields.get("event", b""))
        event_id, user_id = event.event_id, event.user_id
    except Exception:  # noqa: S110 - a malformed event is often why it is here; list it anyway
        pass
    return DeadLetter(
        project_id=keys.project_id,
        partition=keys.partition,
        entry_id=entry_id,
        original_id=_lenient_text(fields.get("original_id", b"")),
        type=_lenient_text(fields.get("type", b"")),
        error=_lenient_text(fields.get("error", b"")),
        deliveries=int(fields.get("deliveries", b"0") or 0),
        dead_lettered_at_ms=int(fields.get("dead_lettered_at_ms", b"0") or 0),
        event_id=event_id,
        user_id=user_id,
    )
