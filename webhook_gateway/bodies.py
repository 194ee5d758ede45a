"""Reading a webhook's body: the size limit, the deadline, and the bound on what large bodies may cost.

A body is fed to the provider's authentication chunk by chunk as it arrives (each chunk at most what one read
from the socket brought in), so that the signature is checked over the raw bytes without a second pass.

Every webhook a provider sends is a few KiB, far below `SMALL_BODY_BYTES` (64 KiB). A body that grows past it
is read on only while it holds one of `LARGE_BODY_SLOTS` slots, and every byte past that size is paced, at
`LARGE_BODY_BYTES_PER_S` for all large bodies together: a sender without a secret can make the gateway read and
hash bodies up to the size limit, but past their first 64 KiB (and the read that crossed it) no faster than
that, however many connections it opens. While a large body waits (for a slot, or for its pace), aiohttp stops
reading its connection once its buffer is full, so a waiting sender costs next to nothing, and the event loop
keeps its idle time for the webhooks that matter. Floods of small requests are not bounded here: each costs
about what a webhook costs, and telling them apart takes the signature; a per-source rate limit at the proxy
is the defence against them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from webhook_gateway.errors import BodyTimeout, BodyTooLarge, InvalidParameter

#: Bodies up to this size are read as they come (a provider's webhook is a few KiB).
SMALL_BODY_BYTES = 64 * 1024
#: Large bodies read at once.
LARGE_BODY_SLOTS = 2
#: The rate at which large bodies are read, all together (about a tenth of a core on the benchmark machine).
LARGE_BODY_BYTES_PER_S = 32 * 1024 * 1024


class Pace:
    """Spaces out work so that, on average, at most `units_per_s` units go through per second.

    Each `take(n)` books n units after those already booked and sleeps until their time has come; callers are
    served in the order they arrived.

    Args:
        units_per_s: the average rate allowed.
        sleep: how to wait (`asyncio.sleep`; a test may watch the waits).
    """

    def __init__(self, units_per_s: float, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._seconds_per_unit = 1.0 / units_per_s
        self._booked_until = 0.0
        self._sleep = sleep

    async def take(self, units: int) -> None:
        """Waits until `units` more fit the pace."""
        now = asyncio.get_running_loop().time()
        self._booked_until = max(now, self._booked_until) + units * self._seconds_per_unit
        if self._booked_until > now:
            await self._sleep(self._booked_until - now)


class BodyReader:
    """Reads request bodies within a size limit and a deadline, bounding what large bodies cost.

    Args:
        max_body_bytes: the largest body accepted.
        small_body_bytes: bodies up to this size are read as they come.
        large_body_slots: larger bodies read at once, past `small_body_bytes`.
        pace: the rate at which large bodies are read past `small_body_bytes`, all together, in bytes
            (`LARGE_BODY_BYTES_PER_S` when None).
    """

    def __init__(
        self,
        max_body_bytes: int,
        *,
        small_body_bytes: int = SMALL_BODY_BYTES,
        large_body_slots: int = LARGE_BODY_SLOTS,
        pace: Pace | None = None,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self._small_body_bytes = small_body_bytes
        self._slots = asyncio.Semaphore(large_body_slots)
        self._pace = Pace(LARGE_BODY_BYTES_PER_S) if pace is None else pace

    async def read(
        self,
        next_chunk: Callable[[], Awaitable[bytes]],
        content_length: int | None,
        deadline: float,
        feed: Callable[[bytes], None],
    ) -> bytes:
        """The whole body, each chunk given to `feed` as it arrives.

        Args:
            next_chunk: what has arrived of the body since the last call (waiting for some), b"" at its end:
                the request's `content.readany`.
            content_length: the announced length (None for a chunked body).
            deadline: the event loop's time by which the whole body must have arrived.
            feed: called with every chunk, in order.

        Raises:
            BodyTooLarge: announced or found larger than the limit (the rest is not read).
            BodyTimeout: the body did not arrive by the deadline.
            InvalidParameter: the body could not be read (a malformed chunked encoding, a broken connection).
        """
        limit = self.max_body_bytes
        too_large = f"The request body is larger than {limit} bytes"
        if content_length is not None and content_length > limit:
            raise BodyTooLarge(too_large)
        body = bytearray()
        try:
            async with contextlib.AsyncExitStack() as slot, asyncio.timeout_at(deadline):
                paced = self._small_body_bytes  # the bytes read so far that needed no slot or were paced
                while chunk := await next_chunk():
                    body += chunk
                    if len(body) > limit:  # a chunked body (no Content-Length to check up front)
                        raise BodyTooLarge(too_large)
                    feed(chunk)
                    if len(body) > paced:
                        if paced == self._small_body_bytes:
                            await slot.enter_async_context(self._slots)
                        # Every byte past the small size is paced, so no body size escapes the bound.
                        await self._pace.take(len(body) - paced)
                        paced = len(body)
        except TimeoutError:
            raise BodyTimeout() from None
        except (HttpProcessingError, RequestPayloadError, ConnectionError):
            raise InvalidParameter("", "The request body could not be read") from None
        return bytes(body)
