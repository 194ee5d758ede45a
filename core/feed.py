"""The change feed: every committed change to a player's entitlements, per project, in Redis streams.

`WatchEntitlements` reads it (`server.watch`); the service's writes fill it (`server.feed`). This module is the
contract between the two: where the feed lives, how a player is placed in it, and what one entry holds.

- Each project's feed is `FEED_PARTITIONS` streams (`FeedKeys.stream`); a player's changes all go to the partition
  `partition_of(user_id)`, in the order they were committed, so one player's versions increase along its stream.
- Each player of a project has a version (`core.keys.UserKeys.version`): the write scripts add one to it for every
  sku they change and record it in that change's ledger entry (field `v`), in the same atomic script as the change.
  The feed carries the same number, so a change is relayed to the feed at most once (`FeedKeys.relayed` remembers
  the last version relayed per player) and never out of order.
- A feed entry's fields are `FIELDS` (below); `FeedEntry.from_fields` reads one back.
- `feed_id_key(project)` holds a random id made the first time the project's feed is used; a cursor names it, so a
  cursor from another store (or from before the store was emptied) is refused rather than misread.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from core.keys import PREFIX

#: The number of streams a project's feed is spread over. Fixed for every store: a cursor records it, and a cursor
#: made with another count is refused (OUT_OF_RANGE), so changing it only costs watchers a fresh snapshot.
FEED_PARTITIONS = 16

#: Field names of a feed entry.
FIELD_USER = "u"
FIELD_SKU = "s"
FIELD_VERSION = "v"
FIELD_OPERATION = "op"
FIELD_AT_MS = "at"
#: The entitlement record after the change, as the items hash stores it (JSON); empty when the sku was removed.
FIELD_RECORD = "e"
FIELDS = (FIELD_USER, FIELD_SKU, FIELD_VERSION, FIELD_OPERATION, FIELD_AT_MS, FIELD_RECORD)


def partition_of(user_id: str) -> int:
    """The feed partition of a player's changes: CRC-32 of the user id modulo `FEED_PARTITIONS` (the same hash as
    the event log's partitions, `core.eventlog.partition_for`)."""
    return zlib.crc32(user_id.encode()) % FEED_PARTITIONS


class FeedKeys:
    """The keys of one partition of one project's feed. They share the hash tag `{fd:<project>:<partition>}`, so
    the relay's dedup check and its XADD run in one atomic script on Redis Cluster too."""

    __slots__ = ("partition", "pending", "project_id", "relayed", "stream", "tag")

    def __init__(self, project_id: int, partition: int) -> None:
        self.project_id = int(project_id)
        self.partition = int(partition)
        self.tag = "{fd:" + str(self.project_id) + ":" + str(self.partition) + "}"
        base = f"{PREFIX}:{self.tag}"
        #: stream: the partition's changes (fields `FIELDS`), trimmed to the retention
        self.stream = f"{base}:changes"
        #: hash user id -> the last version relayed to `stream` (a change at or below it is not added again)
        self.relayed = f"{base}:relayed"
        #: sorted set: players whose writes may not have reached the feed yet, one member per write
        #: (`<16 hex digits>:<user id>`), scored by when (ms); the relay's repair reads it (`server.feed`)
        self.pending = f"{base}:pending"


def feed_keys(project_id: int) -> list[FeedKeys]:
    """Every partition of a project's feed, in partition order."""
    return [FeedKeys(project_id, partition) for partition in range(FEED_PARTITIONS)]


#: Set: the projects whose feed has been written (a relay adds a project before its first write's intent), so that
#: the repair of every replica looks at their partitions, listed in the settings or not.
FEED_PROJECTS_KEY = f"{PREFIX}:feed-projects"


def feed_id_key(project_id: int) -> str:
    """String: the project's feed id (random, made once with SET NX); cursors carry it."""
    return f"{PREFIX}:{{p:{int(project_id)}}}:feed-id"


@dataclass(frozen=True)
class FeedEntry:
    """One change of one player's sku, as the feed holds it."""

    user_id: str
    sku: str
    version: int
    operation: str
    at_ms: int
    #: The record's JSON after the change (as the items hash stores it), or "" when the player no longer holds it.
    record_json: str

    def to_fields(self) -> dict[str, str]:
        return {
            FIELD_USER: self.user_id,
            FIELD_SKU: self.sku,
            FIELD_VERSION: str(self.version),
            FIELD_OPERATION: self.operation,
            FIELD_AT_MS: str(self.at_ms),
            FIELD_RECORD: self.record_json,
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> FeedEntry:
        """Reads an entry back (fields decoded as str).

        Raises:
            KeyError, ValueError: the fields are not a feed entry.
        """
        return cls(
            user_id=fields[FIELD_USER],
            sku=fields[FIELD_SKU],
            version=int(fields[FIELD_VERSION]),
            operation=fields[FIELD_OPERATION],
            at_ms=int(fields[FIELD_AT_MS]),
            record_json=fields[FIELD_RECORD],
        )
