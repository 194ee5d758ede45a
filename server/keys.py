"""Every Redis key the service uses, built in one place.

All keys of one player share the hash tag `{u:<user>}`, so they live in one Redis Cluster slot and a Lua script
can touch them together. User ids are percent-encoded where they hold `{`, `}`, `%` or non-printable bytes, so a
user id can never break out of its hash tag or collide with another.
"""

from __future__ import annotations

from urllib.parse import quote

PREFIX = "ent"
# Characters kept as they are in a key; everything else (notably `{`, `}` and `%`) is percent-encoded.
_SAFE = "!#$&'()*+,-./:;<=>?@[]^_`|~"


def _tag(user_id: str) -> str:
    return "{u:" + quote(user_id, safe=_SAFE) + "}"


class UserKeys:
    """The keys of one player's data."""

    __slots__ = ("idempotency_prefix", "items", "ledger", "skus", "subscriptions", "tag")

    def __init__(self, user_id: str) -> None:
        self.tag = _tag(user_id)
        base = f"{PREFIX}:{self.tag}"
        #: hash sku -> JSON entitlement record
        self.items = f"{base}:items"
        #: sorted set of skus (all scores 0) for paging in sku order
        self.skus = f"{base}:skus"
        #: stream: the audit ledger of every change
        self.ledger = f"{base}:ledger"
        #: hash subscription id -> JSON recurring subscription (written from Xsolla webhooks)
        self.subscriptions = f"{base}:subs"
        self.idempotency_prefix = f"{base}:idem:"

    def idempotency(self, key: str) -> str:
        """The key remembering one idempotency key's request fingerprint and response."""
        return self.idempotency_prefix + key
