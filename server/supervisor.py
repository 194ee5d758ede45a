"""Supervision of the embedded Valkey server: when it dies, start it again on the same data, with backoff.

The service owns the server process (`server.embedded.EmbeddedRedis`), so it waits on it rather than polling:
the moment the process exits without being asked to (a crash, a SIGKILL, the out-of-memory killer), the
supervisor logs one line (`embedded_store_exited`: exit code or signal, uptime, attempt, the wait before the
restart), reports the store down (the health service goes `NOT_SERVING` at once), and restarts the server on the
same data directory, configuration and socket, the data directory's lock held throughout. Everything that holds
Redis connections (the store's client, the consumer, the order-status subscription) reconnects by itself once the
socket answers again; writes acknowledged before the exit are in the append-only file, which the new server loads.

A server that keeps dying is restarted with `core.backoff.Backoff`: attempt n of a streak waits between half and
all of min(30 s, 0.5 s * 2**(n-1)); a server that stayed up `STABLE_S` ends the streak. A restart whose server
does not come up (it exits while loading, or does not answer within the start timeout) is stopped, logged
(`embedded_store_restart_failed`), counted, and tried again after the next wait: never given up, never in a
tight loop. Stopping the supervisor cancels whatever it is doing; the owner then stops the server, whichever
state it is in.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import structlog

from core.backoff import Backoff
from core.lifecycle import cancel_and_wait
from server.embedded import EmbeddedRedis
from server.metrics import EmbeddedStoreMetrics

log = structlog.get_logger("server.supervisor")

#: The wait before restart attempt n (from 1) of a streak: 0.25-0.5 s, then doubling up to 15-30 s.
RESTART_BACKOFF = Backoff(base_s=0.5, cap_s=30.0)
#: A server that ran at least this long before exiting starts a new streak (its restart waits the least again).
STABLE_S = 60.0


class EmbeddedSupervisor:
    """Restarts the embedded server whenever it exits on its own, until `stop()`.

    Args:
        store: the embedded server, started; its owner stops it after stopping the supervisor.
        metrics: the up gauge and the restart counters.
        on_change: called with False when the server is found dead and True once a restart answers.
        backoff: the wait before each restart attempt of a streak.
        start_timeout_s: how long a restarted server may take to load its data and answer.
    """

    def __init__(
        self,
        store: EmbeddedRedis,
        metrics: EmbeddedStoreMetrics,
        *,
        on_change: Callable[[bool], None] = lambda up: None,
        backoff: Backoff = RESTART_BACKOFF,
        start_timeout_s: float = 20.0,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._on_change = on_change
        self._backoff = backoff
        self._start_timeout_s = start_timeout_s
        self._task: asyncio.Task[None] | None = None
        self.up = False

    def start(self) -> None:
        """Starts watching the running server (in the background)."""
        self._set_up(True)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="embedded-store-supervisor")

    async def stop(self) -> None:
        """Stops watching and restarting. A restart in progress is abandoned; its server, if launched, is still the
        store's running process, for the owner's `EmbeddedRedis.stop()`."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _run(self) -> None:
        streak = 0
        up_since = time.monotonic()
        while True:
            returncode = await self._store.wait_exit()
            if returncode is None:
                return  # stopped by its owner
            uptime_s = time.monotonic() - up_since
            streak = streak + 1 if uptime_s < STABLE_S else 1
            down_since = time.monotonic()
            self._set_up(False)
            delay = self._backoff.delay_s(streak - 1)
            log.error(
                "embedded_store_exited",
                exit_code=returncode if returncode >= 0 else None,
                signal=_signal_name(-returncode) if returncode < 0 else None,
                uptime_s=round(uptime_s, 3),
                attempt=streak,
                retry_in_s=round(delay, 3),
                server_log=str(self._store.data_dir / "valkey.log"),
            )
            while True:
                await asyncio.sleep(delay)
                if not self._store.owns_data_dir:
                    return  # stopped by its owner meanwhile
                try:
                    pid = await self._store.restart(self._start_timeout_s)
                    break
                except Exception as exc:  # the server did not come up (or could not be launched): wait, try again
                    if not self._store.owns_data_dir:
                        return
                    streak += 1
                    delay = self._backoff.delay_s(streak - 1)
                    self._metrics.restart_failures.inc()
                    log.error(
                        "embedded_store_restart_failed",
                        error=f"{type(exc).__name__}: {exc}",
                        attempt=streak,
                        retry_in_s=round(delay, 3),
                    )
            up_since = time.monotonic()
            self._metrics.restarts.inc()
            self._set_up(True)
            log.warning("embedded_store_restarted", pid=pid, attempt=streak, down_s=round(up_since - down_since, 3))

    def _set_up(self, up: bool) -> None:
        self.up = up
        self._metrics.up.set(1 if up else 0)
        self._on_change(up)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
