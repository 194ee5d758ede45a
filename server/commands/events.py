"""`python -m server events status` and `dead-letters list|replay|discard`: a project's event streams, and the
events set aside after failing too often."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from core.connections import reply_text
from core.keys import CONSUMER_GROUP
from server.commands.context import operator_redis
from server.config import Settings
from server.consumer import group_info
from server.deadletters import DeadLetters


async def dead_letters_command(
    settings: Settings,
    project_id: int,
    action: str,
    entry_id: str | None,
    *,
    count: int = 100,
    out: TextIO | None = None,
) -> int:
    """Runs `dead-letters list|replay|discard` on a project's dead letters and prints JSON lines; returns the exit
    status (1: no such id).

    Args:
        action: "list", "replay" or "discard".
        entry_id: the dead letter's id (as listed), or None for all of them (replay, discard).
        count: list at most this many per partition.
    """
    out = out or sys.stdout
    async with operator_redis(settings, writes=action != "list") as redis:
        letters = DeadLetters(redis, settings.event_partitions)
        if action == "list":
            for letter in await letters.read(project_id, count):
                print(json.dumps(letter.as_dict(), ensure_ascii=False), file=out)
            return 0
        if action == "replay":
            replayed = await letters.replay(project_id, entry_id)
            for item in replayed:
                row = {"replayed": item.dead_letter_id, "project_id": item.project_id, "partition": item.partition}
                print(json.dumps({**row, "new_id": item.new_entry_id}), file=out)
            return _found(entry_id, project_id, bool(replayed))
        deleted = await letters.discard(project_id, entry_id)
        print(json.dumps({"discarded": deleted, "project_id": project_id}), file=out)
        return _found(entry_id, project_id, bool(deleted))


def _found(entry_id: str | None, project_id: int, found: bool) -> int:
    """The exit status of a replay or discard: 1, said on stderr, when the named dead letter is not there."""
    if entry_id is None or found:
        return 0
    print(f"no dead letter {entry_id} in project {project_id} (see `dead-letters list`)", file=sys.stderr)
    return 1


async def events_status(settings: Settings, project_id: int, *, out: TextIO | None = None) -> int:
    """Prints, per partition of a project, the event stream's length, the consumer group's pending and undelivered
    entries, its consumers, and the dead letters waiting, as JSON lines."""
    out = out or sys.stdout
    async with operator_redis(settings, writes=False) as redis:
        letters = DeadLetters(redis, settings.event_partitions)
        for keys in letters.keys_of(project_id):
            row: dict[str, Any] = {
                "project_id": keys.project_id,
                "partition": keys.partition,
                "stream": keys.stream,
                "length": int(await redis.xlen(keys.stream)),
                "dead_letters": await letters.waiting(keys),
            }
            group = await group_info(redis, keys) if row["length"] or await redis.exists(keys.stream) else None
            if group is not None:
                row.update(
                    pending=int(group["pending"]),
                    undelivered=group.get("lag"),
                    last_delivered_id=reply_text(group["last-delivered-id"]),
                    consumers=[
                        {"name": reply_text(c["name"]), "pending": int(c["pending"]), "idle_ms": int(c["idle"])}
                        for c in await redis.xinfo_consumers(keys.stream, CONSUMER_GROUP)
                    ],
                )
            print(json.dumps(row, ensure_ascii=False), file=out)
    return 0
