"""Xsolla's webhook signature: `Authorization: Signature <sha1(raw body + secret) in lower-case hex>`.

It is a plain SHA-1 of the concatenation, not an HMAC: that is Xsolla's protocol, not a choice made here. The
hash is always taken over the body bytes exactly as received; re-serializing parsed JSON would change them.

Because the secret comes after the body, the body's part of the hash is the same for every secret: `BodyHash`
hashes the body once, chunk by chunk as it arrives (so no single call hashes a whole megabyte while other
requests wait), and each candidate secret then costs one copy of the hash state. The comparisons are
constant-time with no early exit, and the header's value is never logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping

from core.webhooks import InvalidSignature

# As Xsolla's own PHP SDK matches it: the scheme word, one space, exactly 40 lower-case hex digits.
_HEADER = re.compile(r"Signature ([0-9a-f]{40})")

MISSING = "Authorization header not found"
MALFORMED = "Authorization header is not of the form 'Signature <40 lower-case hex digits>'"


def sign(body: bytes, secret: str) -> str:
    """The Authorization header value Xsolla sends with `body` for a project whose secret key is `secret`."""
    digest = BodyHash()
    digest.update(body)
    return "Signature " + digest.hexdigest(secret)


def given_digest(headers: Mapping[str, str]) -> bytes:
    """The signature a request carries, read from its headers alone (before its body is read).

    Returns:
        The 40 lower-case hex digits, as bytes.

    Raises:
        InvalidSignature: the Authorization header is missing or not of Xsolla's form.
    """
    authorization = headers.get("Authorization")
    if authorization is None:
        raise InvalidSignature(MISSING)
    match = _HEADER.fullmatch(authorization)
    if match is None:
        raise InvalidSignature(MALFORMED)
    return match.group(1).encode()


class BodyHash:
    """SHA-1 over a body fed in chunks, finished once per candidate secret."""

    def __init__(self) -> None:
        # S324: SHA-1 is mandated by Xsolla's webhook protocol.
        self._hash = hashlib.sha1()  # noqa: S324  # Xsolla's protocol mandates SHA-1

    def update(self, chunk: bytes) -> None:
        """Adds the next part of the body."""
        self._hash.update(chunk)

    def hexdigest(self, secret: str) -> str:
        """sha1(body so far + secret), in lower-case hex; the body's hash state is left as it was."""
        finished = self._hash.copy()
        finished.update(secret.encode())
        return finished.hexdigest()

    def matching(self, given: bytes, secrets: Iterable[str]) -> frozenset[str]:
        """The secrets among `secrets` whose signature of the body is `given`.

        Every candidate is compared, in constant time and without an early exit, so the time taken does not
        tell which secret, if any, matched.
        """
        matched: set[str] = set()
        for secret in secrets:
            if hmac.compare_digest(self.hexdigest(secret).encode(), given):
                matched.add(secret)
        return frozenset(matched)
