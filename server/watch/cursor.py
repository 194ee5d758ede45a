"""Watch cursors: a position in a project's change feed, one stream id per partition, as an opaque string.

A cursor is base64url (no padding) of `<format>|<project>|<feed id>|<partitions>|<id>,<id>,...`: the format version
(`CURSOR_FORMAT`), the project, the project's feed id (`core.feed.feed_id_key`, so that a cursor of another store,
or of a store emptied since, is refused rather than misread), the number of partitions it was made with, and for
each partition the id of the last entry the stream has passed over (sent, or filtered out), `0-0` for none.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from core.feed import FEED_PARTITIONS
from server.errors import InvalidArgument, OutOfRange

#: The format version a cursor starts with.
CURSOR_FORMAT = 1
#: The longest cursor accepted (the proto's bound); one this service makes is about 800 characters.
MAX_CURSOR_CHARS = 4096
#: What the caller of a cursor that cannot be resumed must do (the proto's words).
REREAD = "changes may have been missed: read the players again (a snapshot) and watch without a cursor"

#: A Redis stream id, (milliseconds, sequence); ordered as Redis orders them.
StreamId = tuple[int, int]
ZERO: StreamId = (0, 0)
_MAX_PART = 2**64 - 1
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_FEED_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NUMBER = re.compile(r"0|[1-9][0-9]{0,18}")
_NOT_ISSUED = "is not a cursor this service issued"


def parse_id(text: str | bytes) -> StreamId:
    """A stream id as Redis writes it (`<ms>-<seq>`).

    Raises:
        ValueError: not one.
    """
    if isinstance(text, bytes):
        text = text.decode("ascii")
    match = _ID.fullmatch(text)
    if match is None:
        raise ValueError(f"not a stream id: {text!r}")
    ms, seq = int(match.group(1)), int(match.group(2))
    if ms > _MAX_PART or seq > _MAX_PART:
        raise ValueError(f"not a stream id: {text!r}")
    return ms, seq


def format_id(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


@dataclass(frozen=True)
class Cursor:
    """A decoded cursor: `positions[p]` is the last entry of partition `p` passed over."""

    project_id: int
    feed_id: str
    positions: tuple[StreamId, ...]

    def encode(self) -> str:
        ids = ",".join(format_id(position) for position in self.positions)
        text = f"{CURSOR_FORMAT}|{self.project_id}|{self.feed_id}|{len(self.positions)}|{ids}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, project_id: int) -> Cursor:
        """Reads a cursor a caller sent for a stream on `project_id`; the feed id is checked against the store's by
        the caller (`server.watch.history.check_cursor`).

        Raises:
            InvalidArgument: `cursor` is not a cursor this service issued (garbage, too long, an unknown format).
            OutOfRange: it was issued for another project, or with another number of partitions.
        """
        if len(text) > MAX_CURSOR_CHARS:
            raise InvalidArgument("cursor", f"must be at most {MAX_CURSOR_CHARS} characters")
        if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
            raise InvalidArgument("cursor", _NOT_ISSUED)
        try:
            decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidArgument("cursor", _NOT_ISSUED) from None
        parts = decoded.split("|")
        if len(parts) != 5 or parts[0] != str(CURSOR_FORMAT):
            raise InvalidArgument("cursor", _NOT_ISSUED)
        project_text, feed_id, count_text, ids_text = parts[1:]
        if not (_NUMBER.fullmatch(project_text) and _NUMBER.fullmatch(count_text) and _FEED_ID.fullmatch(feed_id)):
            raise InvalidArgument("cursor", _NOT_ISSUED)
        texts = ids_text.split(",")
        if len(texts) != int(count_text):
            raise InvalidArgument("cursor", _NOT_ISSUED)
        try:
            positions = tuple(parse_id(part) for part in texts)
        except ValueError:
            raise InvalidArgument("cursor", _NOT_ISSUED) from None
        if int(project_text) != project_id:
            raise OutOfRange("cursor", f"was issued for another project than {project_id}; {REREAD}")
        if len(positions) != FEED_PARTITIONS:
            raise OutOfRange("cursor", f"was issued for a feed of {len(positions)} partitions; {REREAD}")
        return cls(project_id, feed_id, positions)
