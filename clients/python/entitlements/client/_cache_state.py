"""What an entitlement cache holds and how a stream message changes it, with no I/O: the players, their versions,
their items, and the rules that decide whether a change applies, is a repeat, or reveals a gap.

The stream driver (`_cache`) feeds it messages and reads back what to ask the service for; checks read it directly.
It is written for the speed of `check`: each item is kept as the answer a check gives (a time-limited item's
answer also holds its expiry and the answer after it), built when a message arrives, so a check is two dictionary
lookups and, for a time-limited item, one look at the clock.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterable

from entitlements.errors import InvalidArgumentError
from entitlements.v1 import entitlements_pb2 as pb

__all__ = ["CacheContents", "CacheCounters", "CachedCheck", "check_players"]

# Skus are kept interned: a game server's sku constants are string literals, which Python interns when they look
# like identifiers, so a check's lookup then matches the key by identity instead of comparing text.
_intern = sys.intern

#: The service's limits (see WatchEntitlementsRequest.add_user_ids).
MAX_PLAYERS = 100_000
MAX_PLAYERS_PER_MESSAGE = 10_000
_MAX_ID_BYTES = 256


@dataclasses.dataclass(frozen=True, slots=True)
class CachedCheck:
    """The cache's answer for one (player, sku): what CheckEntitlement would answer now.

    Attributes:
        active: Whether the player holds the item now: quantity > 0 and, for a time-limited item, the local clock
            before its `expires_at`.
        entitlement: What the player holds of the sku (its `active` matching the attribute above), or None when the
            player does not hold it. Shared by every check: read it, do not modify it.
    """

    active: bool
    entitlement: pb.Entitlement | None
    # A time-limited item's answer before its expiry carries the expiry (Unix seconds) and the answer from then on;
    # None otherwise, so that a check reads the clock for time-limited items only. Slots of the one class (not class
    # attributes, not a subclass), so that the interpreter's attribute lookup in `check` stays on its fast path.
    _expires_at: float | None = dataclasses.field(default=None, repr=False, compare=False)
    _expired: CachedCheck | None = dataclasses.field(default=None, repr=False, compare=False)


NOT_HELD = CachedCheck(False, None)


@dataclasses.dataclass(slots=True)
class CacheCounters:
    """What the cache has done since it was created.

    Attributes:
        changes_applied: Changes applied to a player's items.
        snapshots: Player snapshots received and applied.
        reopenings: Times the stream was opened again after it broke (the first opening not counted).
        gaps: Changes whose version skipped one: the player was read again (a snapshot).
        duplicates: Changes at or below the player's version, ignored (a correct service never sends one).
    """

    changes_applied: int = 0
    snapshots: int = 0
    reopenings: int = 0
    gaps: int = 0
    duplicates: int = 0


def _item(entitlement: pb.Entitlement) -> CachedCheck:
    """The answer a check gives for an item: built once per change, shared by every check."""
    if entitlement.quantity <= 0:
        return _answer(entitlement, False)
    if entitlement.kind == pb.ENTITLEMENT_KIND_TIME_LIMITED and entitlement.HasField("expires_at"):
        expires_at = entitlement.expires_at.seconds + entitlement.expires_at.nanos / 1e9
        active = pb.Entitlement()
        active.CopyFrom(entitlement)
        active.active = True
        return CachedCheck(True, active, expires_at, _answer(entitlement, False))
    return _answer(entitlement, True)


def _answer(entitlement: pb.Entitlement, active: bool) -> CachedCheck:
    copy = pb.Entitlement()
    copy.CopyFrom(entitlement)
    copy.active = active
    return CachedCheck(active, copy)


class _Player:
    """One player held by the cache: its version and items, or, while a snapshot is awaited, the changes that
    arrived before it."""

    __slots__ = ("asks", "awaiting", "early", "items", "user_id", "version")

    def __init__(self, user_id: str) -> None:
        # The caller's own string: checks pass the same object, which a dictionary matches without comparing text.
        self.user_id = user_id
        self.items: dict[str, CachedCheck] = {}
        self.version = 0
        # "add": never read yet (checks: NotCached); "again": read again after a gap or a lost history (Stale).
        self.awaiting: str | None = "add"
        self.early: list[pb.EntitlementChange] = []
        # Snapshots asked for on the current stream and not received yet: the service answers each ask in order, so
        # only the last one is applied (an earlier one may predate a removal and a new add).
        self.asks = 1


class CacheContents:
    """The players a cache holds, and their items.

    `ready` maps each player whose snapshot has arrived, and who is not waiting for another one, to its items: the
    only structure a check reads. Everything else is for the stream driver.
    """

    def __init__(self, counters: CacheCounters) -> None:
        self.counters = counters
        self.players: dict[str, _Player] = {}
        self.ready: dict[str, dict[str, CachedCheck]] = {}
        # Asks still to be answered on the current stream for players removed meanwhile.
        self.orphans: dict[str, int] = {}

    def add(self, user_ids: Iterable[str]) -> list[str]:
        """Holds these players (awaiting their snapshot); returns those not held before."""
        added = []
        for user_id in user_ids:
            if user_id not in self.players:
                player = self.players[user_id] = _Player(user_id)
                player.asks += self.orphans.pop(user_id, 0)
                added.append(user_id)
        return added

    def remove(self, user_ids: Iterable[str]) -> None:
        """Drops these players at once; a snapshot or change of theirs still in flight is then ignored."""
        for user_id in user_ids:
            player = self.players.pop(user_id, None)
            self.ready.pop(user_id, None)
            if player is not None and player.asks > 0:
                self.orphans[user_id] = player.asks

    def awaiting(self) -> list[str]:
        """The players whose snapshot is awaited."""
        return [user_id for user_id, player in self.players.items() if player.awaiting is not None]

    def new_stream(self) -> None:
        """A stream is opened: it asks once for the snapshot of each player awaiting one, and whatever the previous
        stream was asked will never come."""
        self.orphans.clear()
        for player in self.players.values():
            player.asks = 1 if player.awaiting is not None else 0

    def read_all_again(self) -> None:
        """The stream's history was lost (no cursor to resume from): every player is read again, and refused by
        checks until its snapshot arrives."""
        for user_id, player in self.players.items():
            if player.awaiting is None:
                player.awaiting = "again"
                player.early.clear()
                self.ready.pop(user_id, None)

    def apply_snapshot(self, snapshot: pb.PlayerSnapshot) -> None:
        """Replaces a player's items with its snapshot, then applies the changes that arrived before it."""
        player = self.players.get(snapshot.user_id)
        if player is None:
            left = self.orphans.pop(snapshot.user_id, 0) - 1
            if left > 0:
                self.orphans[snapshot.user_id] = left
            return
        player.asks = max(0, player.asks - 1)
        if player.asks > 0:
            return  # a later ask is answered after this one: its snapshot is the one to apply
        self.counters.snapshots += 1
        player.items = {_intern(entitlement.sku): _item(entitlement) for entitlement in snapshot.entitlements}
        player.version = snapshot.version
        player.awaiting = None
        early, player.early = player.early, []
        self.ready[player.user_id] = player.items
        for change in early:
            # Those the snapshot already includes are expected here (the change that revealed a gap is one), not
            # repeats from the service: left out without being counted.
            if change.version > player.version and self.apply_change(change) == "gap":
                return

    def apply_change(self, change: pb.EntitlementChange) -> str | None:
        """Applies one change if it is the player's next version; returns "gap" when a change was missed (the
        player must be read again: it is no longer in `ready`), else None."""
        player = self.players.get(change.user_id)
        if player is None:
            return None
        if player.awaiting is not None:
            # The snapshot asked for is on its way: keep the change in case it is newer than the snapshot.
            player.early.append(change)
            return None
        if change.version <= player.version:
            self.counters.duplicates += 1
            return None
        if change.version > player.version + 1:
            self.counters.gaps += 1
            player.asks += 1
            player.awaiting = "again"
            player.early = [change]
            self.ready.pop(player.user_id, None)
            return "gap"
        player.version = change.version
        if change.HasField("entitlement"):
            player.items[_intern(change.sku)] = _item(change.entitlement)
        else:
            player.items.pop(change.sku, None)
        self.counters.changes_applied += 1
        return None

    def entitlements(self, items: dict[str, CachedCheck]) -> list[pb.Entitlement]:
        """A ready player's items in sku order (byte-wise: code point order is UTF-8's byte order), each with
        `active` as of now."""
        now = time.time()
        result = []
        for sku in sorted(items):
            answer = items[sku]
            if answer._expired is not None and answer._expires_at is not None and now >= answer._expires_at:
                answer = answer._expired
            assert answer.entitlement is not None
            result.append(answer.entitlement)
        return result


def check_players(name: str, user_ids: Iterable[str]) -> list[str]:
    """Checks player ids as the service does (1..256 bytes of UTF-8, no control characters), so that one bad id
    is refused here rather than ending the stream every other player depends on.

    Raises:
        InvalidArgumentError: naming the first bad id (`players[3]: ...`); nothing is changed.
    """
    if isinstance(user_ids, str):
        raise InvalidArgumentError(f"{name}: must be a list of player ids, not one string")
    checked = list(user_ids)
    for index, user_id in enumerate(checked):
        problem = _id_problem(user_id)
        if problem is not None:
            raise InvalidArgumentError(f"{name}[{index}]: {problem}")
    return checked


def _id_problem(user_id: object) -> str | None:
    if not isinstance(user_id, str):
        return f"must be a str, not {type(user_id).__name__}"
    try:
        size = len(user_id.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if not 1 <= size <= _MAX_ID_BYTES:
        return f"must be 1..{_MAX_ID_BYTES} bytes of UTF-8, got {size}"
    if any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in user_id):
        return "must not contain control characters"
    return None
