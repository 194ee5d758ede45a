"""The link between a group's parent and one of its workers: a socket pair, one end in each process, lines of text.

- worker -> parent: `ready` once the worker serves (its gRPC server, health, consumer started);
- parent -> worker: `store down` / `store up` when the embedded store the parent supervises dies or is back
  (the worker's health answers NOT_SERVING at once, and its Redis loops retry at once when it is back).

Either side seeing the link close knows the other is gone: a worker whose parent died (even SIGKILLed) stops
gracefully rather than serve on unsupervised, and the parent learns of a dead worker from its exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

READY = b"ready\n"
STORE_UP = b"store up\n"
STORE_DOWN = b"store down\n"


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """(the parent's end, the worker's end); the worker's end is inheritable, for `pass_fds`."""
    parent, worker = socket.socketpair()
    worker.set_inheritable(True)
    return parent, worker


class ParentEnd:
    """The parent's end of one worker's link, once the worker is launched (the worker's end closed here)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, end: socket.socket) -> ParentEnd:
        reader, writer = await asyncio.open_connection(sock=end)
        return cls(reader, writer)

    async def ready(self) -> bool:
        """Waits for the worker's `ready`; False if the link closes first (the worker exited)."""
        with contextlib.suppress(ConnectionError):
            return await self._reader.readline() == READY
        return False

    def store(self, up: bool) -> None:
        """Tells the worker the embedded store died or is back (nothing if the worker is gone)."""
        if not self._writer.is_closing():
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._writer.write(STORE_UP if up else STORE_DOWN)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


class WorkerEnd:
    """A worker's end of its link, from the descriptor the parent passed.

    Args:
        fd: the inherited descriptor of the worker's end of the socket pair.
    """

    def __init__(self, fd: int) -> None:
        self._socket = socket.socket(fileno=fd)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(sock=self._socket)

    async def ready(self) -> None:
        """Tells the parent this worker serves."""
        assert self._writer is not None
        self._writer.write(READY)
        await self._writer.drain()

    async def follow(self, on_store: Callable[[bool], None]) -> None:
        """Calls `on_store(up)` for every store message of the parent; returns when the link closes (the parent
        is gone)."""
        assert self._reader is not None
        with contextlib.suppress(ConnectionError):
            while line := await self._reader.readline():
                if line in (STORE_UP, STORE_DOWN):
                    on_store(line == STORE_UP)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
        else:
            self._socket.close()
