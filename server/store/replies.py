"""What Redis answers, read: reply text, the write scripts' flagged payloads, and their error replies as domain errors.

The service's clients do not decode responses, so a reply is bytes, or str where a caller passed text through;
`core.connections.reply_text` reads either. The grant and revoke scripts reply `N<json>` (a new result) or
`R<json>` (replayed from the idempotency record; `server/lua/prologue.lua`). A script refuses a write with an
error reply whose first word is a code (`IDEMPOTENCY_CONFLICT`, `KIND_MISMATCH <held> <asked>`, ...);
`script_error` turns it into the `server.errors` exception a caller can act on.
"""

from __future__ import annotations

import redis.exceptions as redis_errors

from core.connections import reply_code, reply_text
from server.errors import FailedPrecondition, IdempotencyConflict
from server.store.records import KIND_NAMES, MAX_CONSUMABLE_TOTAL


def split_reply(reply: bytes | str) -> tuple[bool, str]:
    """Splits a write script's reply into (replayed, payload)."""
    text = reply_text(reply)
    return text[0] == "R", text[1:]


def script_error(exc: redis_errors.ResponseError) -> Exception:
    """The domain error a script's error reply stands for, or `exc` itself when it is not one of theirs."""
    words = str(exc).split()
    code = reply_code(exc)
    if code == "IDEMPOTENCY_CONFLICT":
        first = words[1] if len(words) > 1 else "another"
        return IdempotencyConflict(
            f"idempotency_key was already used for a different {first} request; use a new key for a new request"
        )
    if code == "KIND_MISMATCH":
        held, asked = (KIND_NAMES.get(int(w), w) for w in words[1:3])
        return FailedPrecondition(f"the player holds this sku as {held}, so it cannot be granted as {asked}")
    if code == "DURATION_REQUIRED":
        return FailedPrecondition("the player holds this sku as time-limited: duration is required")
    if code == "PERMANENT_QUANTITY":
        return FailedPrecondition("the player holds this sku as permanent: quantity must be 1")
    if code == "QUANTITY_LIMIT":
        return FailedPrecondition(f"the grant would raise the quantity above {MAX_CONSUMABLE_TOTAL}")
    if code == "EXPIRY_LIMIT":
        return FailedPrecondition("the grant would move expires_at beyond the year 5138")
    return exc
