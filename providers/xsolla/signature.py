"""Xsolla's webhook signature: `Authorization: Signature <sha1(raw body + secret) in lower-case hex>`.

It is a plain SHA-1 of the concatenation, not an HMAC: that is Xsolla's protocol, not a choice made here. The
hash is always taken over the body bytes exactly as received; re-serializing parsed JSON would change them.
The comparison is constant-time, and the header's value is never logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

from core.webhooks import InvalidSignature

# As Xsolla's own PHP SDK matches it: the scheme word, one space, exactly 40 lower-case hex digits.
_HEADER = re.compile(r"Signature ([0-9a-f]{40})")


def sign(body: bytes, secret: str) -> str:
    """The Authorization header value Xsolla sends with `body` for a project whose secret key is `secret`."""
    return "Signature " + _digest(body, secret)


def verify(body: bytes, authorization: str | None, secrets: Iterable[str]) -> None:
    """Checks the Authorization header of a webhook against each accepted secret.

    Args:
        body: the raw request body.
        authorization: the Authorization header's value (None when absent).
        secrets: the secrets the project's webhooks may be signed with; empty means none is configured.

    Raises:
        InvalidSignature: the header is missing or malformed, no secret is configured, or no secret matches.
    """
    if authorization is None:
        raise InvalidSignature("Authorization header not found")
    match = _HEADER.fullmatch(authorization)
    if match is None:
        raise InvalidSignature("Authorization header is not of the form 'Signature <40 lower-case hex digits>'")
    given = match.group(1).encode()
    matched = False
    for secret in secrets:
        # No early exit: the time taken does not tell which secret, if any, matched.
        matched |= hmac.compare_digest(_digest(body, secret).encode(), given)
    if not matched:
        raise InvalidSignature("Invalid signature")


def _digest(body: bytes, secret: str) -> str:
    # S324: SHA-1 is mandated by Xsolla's webhook protocol.
    return hashlib.sha1(body + secret.encode()).hexdigest()  # noqa: S324  # Xsolla's protocol mandates SHA-1
