"""Leases in Redis: at most one replica does a piece of work at a time (sweeps a project's orders at the provider:
`server.reconcile.lease`; follows one order at the provider: `server.tracking.upstream`).

A lease is a Redis string holding its holder's id, taken with SET NX PX. Its holder renews it every third of its
length (compare-and-PEXPIRE) and releases it when done (compare-and-DEL), both one Lua script
(`server/lua/lease.lua`), so a holder whose lease expired and was taken by another replica never extends or deletes
the new holder's. A holder that crashes loses the lease when it expires; a holder that cannot renew it (another
took it after a long pause, or Redis did not confirm a renewal before it would have expired) stops its work at once
(`LeaseLost`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Coroutine
from typing import Any, Final, TypeVar

import structlog

from core import scripts
from core.connections import RedisClient, bounded, reply_text
from core.errors import StoreUnavailable

log = structlog.get_logger("server.leases")

T = TypeVar("T")

#: Renewals per lease length.
RENEWALS_PER_LEASE: Final = 3


class LeaseLost(Exception):
    """The holder no longer holds the lease (taken by another replica, or not confirmed in time): it must stop."""


def holder_id() -> str:
    """A new holder id: the host and process (for operators: who holds a lease), and a random part (unique)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"


class Lease:
    """One replica's claim on one lease.

    Args:
        redis: a connected client, owned by the caller.
        key: the lease's key (`core.keys`).
        lease_s: how long the lease lasts unless renewed (a crashed holder's is free after this long).
        timeout_s: upper bound of one Redis call, retries included.
        name: what the lease guards, in log lines ("sweeper": `sweeper_lease_renewal_failed`).
        holder: the holder id (`holder_id()` when not given).
    """

    def __init__(
        self,
        redis: RedisClient,
        key: str,
        *,
        lease_s: float,
        timeout_s: float,
        name: str = "work",
        holder: str | None = None,
    ) -> None:
        self._redis = redis
        self.key = key
        self.name = name
        self.holder = holder or holder_id()
        self._lease_ms = max(1, int(lease_s * 1000))
        self._timeout_s = timeout_s
        self._script = scripts.register(redis, "server", "lease.lua")

    async def acquire(self) -> bool:
        """Takes the lease if nobody holds it; True when taken.

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        return bool(await self._call(self._redis.set(self.key, self.holder, nx=True, px=self._lease_ms)))

    async def renew(self) -> str | None:
        """Extends the lease by its length if this holder still holds it; None when it did, else why it does not.

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        held = int(await self._call(self._script(keys=[self.key], args=["renew", self.holder, self._lease_ms])))
        if held == 1:
            return None
        if held == 0:
            return "the lease expired before it was renewed"
        return "another replica holds the lease"

    async def release(self) -> None:
        """Gives the lease up if this holder holds it, so another replica need not wait for it to expire. Best
        effort: when Redis does not answer, the lease expires on its own."""
        try:
            await self._call(self._script(keys=[self.key], args=["release", self.holder, 0]))
        except StoreUnavailable as exc:
            log.warning(f"{self.name}_lease_not_released", key=self.key, error=str(exc), note="it expires on its own")

    async def _call(self, operation: Awaitable[Any]) -> Any:
        # An error reply (out of memory, a read-only replica): the lease is neither taken nor renewed.
        return await bounded(operation, self._timeout_s, refused="the lease command")

    async def current(self) -> tuple[str, int] | None:
        """Who holds the lease now and for how long yet (ms), or None when it is free.

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(self.key)
        pipe.pttl(self.key)
        holder, ttl = await bounded(pipe.execute(), self._timeout_s)
        if holder is None:
            return None
        return reply_text(holder), max(0, int(ttl))

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Runs `work` (taken with `acquire` first) while renewing the lease; the moment the lease is lost, `work`
        is cancelled and `LeaseLost` raised. The lease is released at the end either way.

        Raises:
            LeaseLost: the lease was lost while `work` ran.
            Whatever `work` raises.
        """
        task = asyncio.ensure_future(work)
        keeper = asyncio.ensure_future(self._keep())
        try:
            await asyncio.wait({task, keeper}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise LeaseLost(keeper.result())
        finally:
            for pending in (task, keeper):
                if not pending.done():
                    pending.cancel()
            await asyncio.gather(task, keeper, return_exceptions=True)
            await self.release()

    async def _keep(self) -> str:
        """Renews the lease every third of its length; returns why it was lost."""
        period_s = self._lease_ms / 1000 / RENEWALS_PER_LEASE
        confirmed = time.monotonic()  # the lease lasts at least its length from the last confirmed renewal's send
        while True:
            await asyncio.sleep(period_s)
            sent = time.monotonic()
            try:
                lost = await self.renew()
                if lost is not None:
                    return lost
                confirmed = sent
            except StoreUnavailable as exc:
                # Waiting for the next renewal could outlast the lease: another replica may take it meanwhile.
                if time.monotonic() + period_s - confirmed >= self._lease_ms / 1000:
                    return f"the lease could not be renewed in time: {exc}"
                log.warning(f"{self.name}_lease_renewal_failed", key=self.key, error=str(exc))
