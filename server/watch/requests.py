"""The caller's messages of a WatchEntitlements stream, validated: the first opens the watch (`WatchOpen`), later
ones only add or remove players (`PlayerChange`)."""

from __future__ import annotations

from dataclasses import dataclass

from entitlements.v1 import entitlements_pb2 as pb
from server.errors import InvalidArgument
from server.validation import duration_parts, identifier
from server.watch.cursor import Cursor

#: Players one message may add (or remove), and one stream may watch at once.
MAX_IDS_PER_MESSAGE = 10_000
MAX_PLAYERS_PER_STREAM = 100_000
#: `heartbeat_interval`: its default and bounds, in ms.
DEFAULT_HEARTBEAT_MS = 15_000
MIN_HEARTBEAT_MS = 1_000
MAX_HEARTBEAT_MS = 300_000
#: Fields only the first message may set.
_FIRST_ONLY = ("project_id", "cursor", "all_players", "heartbeat_interval")


@dataclass(frozen=True)
class PlayerChange:
    """Players to stop watching, then players to start watching, and whether to send the added players' snapshots."""

    add: tuple[str, ...]
    remove: tuple[str, ...]
    snapshot: bool


@dataclass(frozen=True)
class WatchOpen:
    """The first message: where to start (`cursor`: None for now), whom to watch, how often to beat."""

    cursor: Cursor | None
    all_players: bool
    heartbeat_s: float
    players: PlayerChange


def _ids(name: str, values: list[str]) -> tuple[str, ...]:
    if len(values) > MAX_IDS_PER_MESSAGE:
        raise InvalidArgument(name, f"has {len(values)} ids; at most {MAX_IDS_PER_MESSAGE:,} per message")
    for index, value in enumerate(values):
        identifier(f"{name}[{index}]", value)
    return tuple(values)


def _players(request: pb.WatchEntitlementsRequest) -> PlayerChange:
    return PlayerChange(
        add=_ids("add_user_ids", list(request.add_user_ids)),
        remove=_ids("remove_user_ids", list(request.remove_user_ids)),
        snapshot=request.snapshot,
    )


def _heartbeat_ms(request: pb.WatchEntitlementsRequest) -> int:
    if not request.HasField("heartbeat_interval"):
        return DEFAULT_HEARTBEAT_MS
    seconds, nanos = duration_parts("heartbeat_interval", request.heartbeat_interval)
    ms = seconds * 1000 + nanos // 1_000_000
    if not MIN_HEARTBEAT_MS <= ms <= MAX_HEARTBEAT_MS or (ms == MAX_HEARTBEAT_MS and nanos % 1_000_000):
        raise InvalidArgument("heartbeat_interval", "must be from 1 s to 5 minutes")
    return ms


def opening(request: pb.WatchEntitlementsRequest, project_id: int) -> WatchOpen:
    """The first message of a stream on `project_id`, checked.

    Raises:
        InvalidArgument: a field out of range (named), players named with `all_players`, a cursor not issued here.
        OutOfRange: a cursor of another project or partition count.
    """
    heartbeat_ms = _heartbeat_ms(request)
    players = _players(request)
    if request.all_players and (players.add or players.remove):
        field = "add_user_ids" if players.add else "remove_user_ids"
        raise InvalidArgument(field, "must be empty when all_players is set")
    cursor = Cursor.decode(request.cursor, project_id) if request.cursor else None
    return WatchOpen(cursor, request.all_players, heartbeat_ms / 1000, players)


def later(request: pb.WatchEntitlementsRequest, *, all_players: bool) -> PlayerChange:
    """A message after the first, checked: it may only add or remove players, and not on a stream of all players.

    Raises:
        InvalidArgument: a first-only field is set, or an id is invalid (named).
    """
    for name in _FIRST_ONLY:
        is_set = (
            request.HasField("heartbeat_interval") if name == "heartbeat_interval" else bool(getattr(request, name))
        )
        if is_set:
            raise InvalidArgument(name, "may be set in the stream's first message only")
    players = _players(request)
    if all_players and (players.add or players.remove):
        field = "add_user_ids" if players.add else "remove_user_ids"
        raise InvalidArgument(field, "must stay empty on a stream of all_players")
    return players
