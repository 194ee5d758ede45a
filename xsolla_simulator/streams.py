"""Channel streams: the publications of one channel with their offsets and epoch, as a Centrifuge history
engine keeps them, and the history and recovery queries the protocol asks of them.

Offsets start at 1 and grow by one per publication; the epoch names one life of the stream (a new epoch means
the old offsets mean nothing). With `max_size`, only the newest publications are kept, as Centrifugo's
`history_size` does.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def order_channel(project_id: int, user_id: str) -> str:
    """The channel of a player's order statuses.

    Xsolla does not document its channel names (the subscription is server-side, and the SDKs never look at the
    name); this one follows Centrifugo's `namespace:name` convention.
    """
    return f"orders:{project_id}:{user_id}"


@dataclass(frozen=True)
class Publication:
    """One publication of a stream."""

    offset: int
    data: Mapping[str, Any]

    def wire(self) -> dict[str, Any]:
        """The protocol's `Publication` object (JSON)."""
        return {"data": dict(self.data), "offset": self.offset}


class UnrecoverablePosition(Exception):
    """The position asked for belongs to another epoch, or is older than what the stream retains."""


class Stream:
    """The publications of one channel.

    Args:
        max_size: how many publications to keep (None: all).
    """

    def __init__(self, channel: str, *, max_size: int | None = None) -> None:
        self.channel = channel
        self.epoch = secrets.token_hex(4)
        self.top = 0  # the offset of the newest publication; 0 while there is none
        self._publications: deque[Publication] = deque(maxlen=max_size)

    def append(self, data: Mapping[str, Any]) -> Publication:
        """Adds a publication at the next offset."""
        self.top += 1
        publication = Publication(self.top, dict(data))
        self._publications.append(publication)
        return publication

    def reset(self) -> None:
        """Starts a new epoch with no publications (what a history engine restart without persistence does)."""
        self.epoch = secrets.token_hex(4)
        self.top = 0
        self._publications.clear()

    def history(self, *, limit: int, since: tuple[int, str] | None, reverse: bool) -> list[Publication]:
        """The publications a history request asks for, with Centrifuge's semantics.

        Args:
            limit: -1 for all, 0 for none (only the stream's position), n > 0 for at most n.
            since: (offset, epoch): only publications after that offset (before it when `reverse`); an empty
                epoch matches any.
            reverse: newest first.

        Raises:
            UnrecoverablePosition: `since` names another epoch.
        """
        if since is not None and since[1] and since[1] != self.epoch:
            raise UnrecoverablePosition(since[1])
        found = list(self._publications)
        if reverse:
            found.reverse()
        if since is not None:
            offset = since[0]
            found = [p for p in found if (p.offset < offset if reverse else p.offset > offset)]
        if limit >= 0:
            found = found[:limit]
        return found

    def recover(self, offset: int, epoch: str) -> list[Publication] | None:
        """The publications a client missed since (offset, epoch); None when they cannot all be given."""
        if epoch != self.epoch or offset > self.top:
            return None
        oldest = self._publications[0].offset if self._publications else self.top + 1
        if offset + 1 < oldest:
            return None
        return [p for p in self._publications if p.offset > offset]
