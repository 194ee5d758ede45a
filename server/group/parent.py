"""The parent of a group of service processes (`ENTITLEMENTS_PROCESSES` > 1): N workers sharing the ports.

`python -m server` with `ENTITLEMENTS_PROCESSES=N` (or `auto`: the cores it may run on) becomes this parent:

1. it holds the gRPC port (and the HTTP/JSON API's) for the group (`server.group.ports`): a second service started
   on the same port is refused, whatever its own setting;
2. without REDIS_URL it runs the embedded Valkey and its supervisor (`server.supervisor`), and gives the workers
   its socket; it tells them when the store dies and when it is back (`server.group.link`);
3. it serves its own metrics on the metrics port (`server.metrics.WorkerGroupMetrics`, and the embedded store's);
   worker i serves its own at `ENTITLEMENTS_WORKER_METRICS_PORT` + i (by default the metrics port + 1 + i);
4. it starts the N workers (`python -m server worker`, `server.group.worker`) and waits until each serves; if one
   exits or does not serve within `WORKER_START_TIMEOUT_S`, it stops the others and exits non-zero;
5. a worker that exits on its own (a crash, a SIGKILL, the out-of-memory killer, a consumer that stopped) is
   logged (`worker_exited`), started again after a backoff (`core.backoff.Backoff`: attempt n of a streak waits
   between half and all of min(30 s, 0.5 s * 2**(n-1)); a worker that ran `STABLE_S` ends the streak) and
   counted (`entitlements_worker_restarts_total`). Meanwhile its siblings keep serving the port: the kernel only
   gives connections to listening sockets;
6. on SIGTERM or SIGINT it stops restarting, sends SIGTERM to every worker (each stops gracefully, as a single
   service does: `server.app.Service.stop`), waits for them up to the grace period plus `DRAIN_MARGIN_S`, kills
   any left, then stops the embedded store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry

from core.backoff import Backoff
from core.metrics import MetricsEndpoint
from server.config import Settings
from server.embedded import EmbeddedRedis
from server.errors import ConfigError
from server.group.link import ParentEnd, socket_pair
from server.group.ports import HeldPort, hold_port
from server.metrics import EmbeddedStoreMetrics, WorkerGroupMetrics
from server.supervisor import EmbeddedSupervisor

log = structlog.get_logger("server.group")

#: How long a worker may take from its launch to serving (its Redis checks included).
WORKER_START_TIMEOUT_S = 60.0
#: The wait before restart attempt n (from 1) of a streak: 0.25-0.5 s, then doubling up to 15-30 s.
RESTART_BACKOFF = Backoff(base_s=0.5, cap_s=30.0)
#: How long a worker whose link closed before it served may take to exit before it is sent SIGTERM.
EXIT_WAIT_S = 10.0
#: A worker that served at least this long before exiting starts a new streak.
STABLE_S = 60.0
#: Beyond the workers' own grace period, how long the parent waits for them to stop before killing them.
DRAIN_MARGIN_S = 10.0


class WorkerFailed(RuntimeError):
    """A worker did not start; `status` is its exit status (2: a configuration error), or 1."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Worker:
    """One running worker process and the parent's end of its link."""

    index: int
    process: asyncio.subprocess.Process
    link: ParentEnd
    started: float


class WorkerGroup:
    """N service processes sharing the ports. Build it inside the running event loop, `start()`, then `stop()`.

    Args:
        settings: the service's settings (`processes` is N).
        env: the workers' environment, before the parent's additions (this process's when None).
        command: how to start a worker (`python -m server worker` with this interpreter by default).
        backoff: the wait before each restart attempt of a streak.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
        backoff: Backoff = RESTART_BACKOFF,
    ) -> None:
        self.settings = settings
        self.count = settings.processes
        self._env = dict(os.environ if env is None else env)
        self._command = list(command or (sys.executable, "-m", "server", "worker"))
        self._backoff = backoff
        self.registry = CollectorRegistry()
        self.metrics = WorkerGroupMetrics(self.registry, self.count)
        self._store_metrics = EmbeddedStoreMetrics(self.registry) if settings.redis_url is None else None
        self._endpoint = MetricsEndpoint(self.registry)
        self._held: list[HeldPort] = []
        self.embedded: EmbeddedRedis | None = None
        self.supervisor: EmbeddedSupervisor | None = None
        self._store_up = True
        self.workers: dict[int, Worker] = {}
        self._slots: list[asyncio.Task[None]] = []
        self._stopping = False
        self.grpc_port = settings.grpc_port
        self.http_port = settings.http.port
        self.metrics_port: int | None = None

    async def start(self) -> None:
        """Holds the ports, starts the embedded store (without REDIS_URL) and the metrics endpoint, then the workers,
        and returns once every one serves; on failure stops what it started and raises.

        Raises:
            PortInUse: a port is taken by another process.
            ConfigError: the workers' metrics ports would pass 65535 or include the parent's, or a host does not
                resolve.
            WorkerFailed: a worker exited, or did not serve in time, before serving.
        """
        settings = self.settings
        first = self.first_worker_metrics_port
        if first and first + self.count - 1 > 65535:
            raise ConfigError(
                f"ENTITLEMENTS_WORKER_METRICS_PORT {first} leaves no room for {self.count} workers' metrics ports "
                "(that port + i): choose a lower port"
            )
        if first and settings.metrics_port and first <= settings.metrics_port < first + self.count:
            raise ConfigError(
                f"ENTITLEMENTS_METRICS_PORT {settings.metrics_port} is among the workers' metrics ports "
                f"({first}-{first + self.count - 1}, ENTITLEMENTS_WORKER_METRICS_PORT + i)"
            )
        try:
            held = hold_port(settings.grpc_host, settings.grpc_port, "ENTITLEMENTS_GRPC_PORT")
            self._held.append(held)
            self.grpc_port = held.port
            if settings.http.enabled:
                held = hold_port(settings.http.host, settings.http.port, "ENTITLEMENTS_HTTP_PORT")
                self._held.append(held)
                self.http_port = held.port
            if settings.redis_url is None:
                self.embedded = EmbeddedRedis(settings.data_dir, appendfsync=settings.appendfsync)
                await self.embedded.start()
                assert self._store_metrics is not None
                self.supervisor = EmbeddedSupervisor(self.embedded, self._store_metrics, on_change=self._store_change)
                self.supervisor.start()
            self.metrics_port = await self._endpoint.start(settings.metrics_host, settings.metrics_port)
            started = await asyncio.gather(*(self._launch(i) for i in range(self.count)), return_exceptions=True)
            for result in started:
                if isinstance(result, BaseException):
                    raise result
            for index in range(self.count):
                self._slots.append(asyncio.create_task(self._supervise(index), name=f"worker-{index}"))
        except BaseException:
            await self.stop()
            raise
        log.info(
            "group_started",
            processes=self.count,
            grpc=f"{settings.grpc_host}:{self.grpc_port}",
            http=f"{settings.http.host}:{self.http_port}" if settings.http.enabled else None,
            metrics=f"{settings.metrics_host}:{self.metrics_port}",
            redis="embedded" if self.embedded else "external",
            pids=[worker.process.pid for worker in self.workers.values()],
        )

    @property
    def first_worker_metrics_port(self) -> int:
        """Worker 0's metrics port (worker i's is this + i); 0: each worker's is a free port."""
        settings = self.settings
        if settings.worker_metrics_port is not None:
            return settings.worker_metrics_port
        return settings.metrics_port + 1 if settings.metrics_port else 0

    def _store_change(self, up: bool) -> None:
        self._store_up = up
        for worker in self.workers.values():
            worker.link.store(up)

    def worker_env(self, index: int) -> dict[str, str]:
        """Worker `index`'s environment: the parent's, with the ports held, its own metrics port, the store."""
        env = dict(self._env)
        env["ENTITLEMENTS_PROCESSES"] = "1"
        env["ENTITLEMENTS_GRPC_PORT"] = str(self.grpc_port)
        env["ENTITLEMENTS_HTTP_PORT"] = str(self.http_port)
        first = self.first_worker_metrics_port
        env["ENTITLEMENTS_METRICS_PORT"] = str(first + index if first else 0)
        if self.embedded is not None:
            env["REDIS_URL"] = self.embedded.url
            env["REDIS_CLUSTER"] = "false"
        return env

    async def _launch(self, index: int) -> Worker:
        """Starts worker `index` and waits until it serves.

        Raises:
            WorkerFailed: it exited, or did not serve within `WORKER_START_TIMEOUT_S` (then it is killed).
        """
        parent_end, worker_end = socket_pair()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command,
                "--index",
                str(index),
                "--link-fd",
                str(worker_end.fileno()),
                # The worker says in its logs that the store it uses is the parent's.
                *(("--parent-store",) if self.embedded is not None else ()),
                env=self.worker_env(index),
                pass_fds=(worker_end.fileno(),),
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            worker_end.close()
        link = await ParentEnd.open(parent_end)
        worker = self.workers[index] = Worker(index, process, link, time.monotonic())
        if not self._store_up:
            link.store(False)
        late = False
        try:
            async with asyncio.timeout(WORKER_START_TIMEOUT_S):
                ready = await link.ready()
        except TimeoutError:
            ready, late = False, True
        if not ready:
            # A link closed before `ready`: the worker is exiting (its own error printed); let it finish first.
            status = await _end(process, grace_s=1.0, wait_s=0.0 if late else EXIT_WAIT_S)
            await link.close()
            raise WorkerFailed(
                f"worker {index} (pid {process.pid}) "
                + (f"exited with status {status}" if status >= 0 else f"was stopped by {_signal_name(-status)}")
                + " before serving",
                2 if status == 2 else 1,
            )
        self.metrics.running.inc()
        log.info("worker_started", index=index, pid=process.pid)
        return worker

    async def _supervise(self, index: int) -> None:
        """Restarts worker `index` whenever it exits on its own, until the group stops."""
        streak = 0
        while True:
            worker = self.workers[index]
            status = await worker.process.wait()
            if self._stopping:
                return
            self.metrics.running.dec()
            await worker.link.close()
            uptime_s = time.monotonic() - worker.started
            streak = streak + 1 if uptime_s < STABLE_S else 1
            event = "worker_exited"
            while True:
                delay = self._backoff.delay_s(streak - 1)
                log.error(
                    event,
                    index=index,
                    pid=self.workers[index].process.pid,
                    exit_code=status if status >= 0 else None,
                    signal=_signal_name(-status) if status < 0 else None,
                    uptime_s=round(uptime_s, 3),
                    attempt=streak,
                    retry_in_s=round(delay, 3),
                )
                await asyncio.sleep(delay)
                try:
                    await self._launch(index)
                    break
                except Exception as exc:  # it did not come up, or could not be launched (out of processes, memory)
                    streak += 1
                    status = exc.status if isinstance(exc, WorkerFailed) else 1
                    uptime_s, event = 0.0, "worker_restart_failed"
                    if not isinstance(exc, WorkerFailed):
                        log.error("worker_launch_failed", index=index, error=f"{type(exc).__name__}: {exc}")
            self.metrics.restarts.inc()
            log.warning("worker_restarted", index=index, pid=self.workers[index].process.pid, attempt=streak)

    async def stop(self) -> None:
        """Stops restarting, stops every worker gracefully (SIGTERM; SIGKILL after the grace period plus
        `DRAIN_MARGIN_S`), then the embedded store, the metrics endpoint and the held ports."""
        self._stopping = True
        for slot in self._slots:
            slot.cancel()
        await asyncio.gather(*self._slots, return_exceptions=True)
        self._slots.clear()
        if self.workers:
            log.info("group_stopping", processes=len(self.workers), grace_s=self.settings.shutdown_grace_s)
            grace_s = self.settings.shutdown_grace_s + DRAIN_MARGIN_S
            statuses = await asyncio.gather(*(_end(w.process, grace_s=grace_s) for w in self.workers.values()))
            for worker, status in zip(self.workers.values(), statuses, strict=True):
                await worker.link.close()
                if status != 0:
                    log.warning("worker_stopped_uncleanly", index=worker.index, pid=worker.process.pid, status=status)
            self.metrics.running.set(0)
            self.workers.clear()
        if self.supervisor is not None:
            await self.supervisor.stop()
            self.supervisor = None
        if self.embedded is not None:
            await self.embedded.stop()
            self.embedded = None
        await self._endpoint.stop()
        for held in self._held:
            held.close()
        self._held.clear()
        log.info("group_stopped")


async def run_group(settings: Settings, stop: asyncio.Event) -> None:
    """Runs a group of `settings.processes` workers until `stop` is set, then drains it."""
    group = WorkerGroup(settings)
    await group.start()
    await stop.wait()
    log.info("shutdown_requested", grace_s=settings.shutdown_grace_s)
    await group.stop()


async def _end(process: asyncio.subprocess.Process, *, grace_s: float, wait_s: float = 0.0) -> int:
    """Stops `process`: lets it exit by itself for `wait_s`, then SIGTERM, then SIGKILL after `grace_s`; returns
    its exit status (negative: a signal)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait_s):
            await process.wait()
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            async with asyncio.timeout(grace_s):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    return await process.wait()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
