"""The limits every identifier and quantity obeys, wherever it enters the system.

A gRPC request is checked by `server.validation`; a provider's webhook by the provider, in the gateway, before the
event is stored. Both use these limits, so an event the gateway acknowledges is one the service can apply: what
would never apply is refused at the door (the provider then refunds the order), not acknowledged and
dead-lettered.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: Player ids, skus, order ids, subscription ids, idempotency keys and event ids: at most this many UTF-8 bytes.
MAX_ID_BYTES = 256
#: The most units one Grant RPC may add.
MAX_GRANT_QUANTITY = 1_000_000
#: The most units of one consumable a player may hold, and so the most one order line may carry.
MAX_CONSUMABLE_TOTAL = 1_000_000_000_000

#: Unicode's control characters (category Cc): C0 (U+0000-U+001F), DEL (U+007F) and C1 (U+0080-U+009F).
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def identifier_problem(value: str) -> str | None:
    """What makes `value` unusable as an identifier, in words that follow the field's name; None when it is fine.

    An identifier is 1 to MAX_ID_BYTES bytes of UTF-8 with no control character.
    """
    if not value:
        return "is required"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate, possible in JSON ("\ud800") though not in protobuf
        return "is not valid Unicode"
    if size > MAX_ID_BYTES:
        return f"must be at most {MAX_ID_BYTES} bytes"
    if CONTROL_CHARACTERS.search(value):
        return "must not contain control characters"
    return None


def all_identifiers(values: Iterable[str]) -> bool:
    """Whether every one of `values` is an identifier (`identifier_problem` finds nothing), checked at once: one
    encoding and one search over all of them, then each one's length. A batch of ids (CheckEntitlements' players and
    skus) costs a fraction of checking each; `identifier_problem` then names what is wrong with which."""
    values = list(values)
    joined = "".join(values)
    try:
        joined.encode("utf-8")  # a lone surrogate (possible in JSON) stays one next to another: Python never pairs them
    except UnicodeEncodeError:
        return False
    if CONTROL_CHARACTERS.search(joined):
        return False
    # A code point is at most 4 bytes of UTF-8: only a long value needs encoding to know its size.
    short = MAX_ID_BYTES // 4
    return all(value and (len(value) <= short or len(value.encode()) <= MAX_ID_BYTES) for value in values)


def quantity_problem(value: int, maximum: int) -> str | None:
    """What makes `value` unusable as a quantity of at most `maximum`, or None."""
    if not 1 <= value <= maximum:
        return f"must be between 1 and {maximum:,}, not {value}"
    return None
