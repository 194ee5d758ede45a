"""Child processes of the benchmark: pinned to cores, in their own process group, never left behind.

Every server and load generator runs through `Child`, which starts it under `taskset -c <cores>` in a new
session (so one signal reaches it and whatever it forked), and whose `stop()` ends the whole group:
SIGTERM, a grace period, then SIGKILL. Descendants that left the group (the service starts its embedded
Valkey in a session of its own) are remembered with `adopt_descendants()` and killed too if they outlive
their parent. A child started with pipes can be talked to in JSON lines (`send`, `receive`).
`signals_interrupt()` turns SIGTERM and SIGINT into KeyboardInterrupt so the `finally` blocks that stop the
children run on those too.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

from bench.cores import cpu_list

TASKSET = shutil.which("taskset")


def pinned_argv(argv: Sequence[str], cores: Sequence[int] | None) -> list[str]:
    """`argv` prefixed with `taskset -c <cores>` (unchanged when `cores` is empty or taskset is missing)."""
    if not cores or TASKSET is None:
        return list(argv)
    return [TASKSET, "-c", cpu_list(cores), *argv]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces; the rest follows the last ')'.
    return text[text.rindex(")") + 2 :].split()


def _start_ticks(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return None if fields is None else fields[19]  # starttime, field 22 of /proc/<pid>/stat


def descendants(pid: int) -> list[int]:
    """The pids of every living descendant of `pid`, found through /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


class Child:
    """One child process, started under `taskset` in a new session.

    Args:
        name: what the process is, for messages.
        argv: the command.
        cores: the cores it may run on; None or empty for no pinning.
        env: its environment (the parent's when None).
        stdout: where its standard output goes (a pipe when None).
        stdin: what its standard input is: `subprocess.PIPE` to talk to it (`send`), else inherited.
        log_path: a file receiving its standard error (inherited when None).
        cwd: its working directory (the parent's when None).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cores: Sequence[int] | None,
        env: Mapping[str, str] | None = None,
        stdout: IO[str] | int | None = None,
        stdin: int | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.cores = tuple(cores or ())
        self._log = log_path.open("a") if log_path is not None else None
        self._adopted: list[tuple[int, str | None]] = []
        self._received = b""
        self.process: subprocess.Popen[str] = subprocess.Popen(  # noqa: S603  # argv built here, never from input
            pinned_argv(argv, self.cores),
            env=dict(env) if env is not None else None,
            stdout=subprocess.PIPE if stdout is None else stdout,
            stdin=stdin,
            stderr=self._log,
            text=True,
            start_new_session=True,
            cwd=cwd,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, message: Mapping[str, Any]) -> None:
        """Writes `message` as one JSON line to the process's standard input (started with `stdin=PIPE`)."""
        stream = self.process.stdin
        if stream is None:
            raise RuntimeError(f"{self.name} was started without a pipe on its standard input")
        stream.write(json.dumps(message) + "\n")
        stream.flush()

    def receive(self, timeout_s: float) -> dict[str, Any]:
        """The next JSON object the process writes on its standard output, one per line.

        Raises:
            RuntimeError: nothing within `timeout_s`, the process exited first, or the line is not an object.
        """
        stream = self.process.stdout
        if stream is None:
            raise RuntimeError(f"{self.name} was started without a pipe on its standard output")
        deadline = time.monotonic() + timeout_s
        # Read the descriptor directly: a buffered readline could hold a second line that select() then
        # never reports.
        while b"\n" not in self._received:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{self.name} said nothing within {timeout_s:g} s")
            ready, _, _ = select.select([stream.fileno()], [], [], remaining)
            if ready:
                chunk = os.read(stream.fileno(), 1 << 20)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited with code {self.process.wait()} before answering")
                self._received += chunk
        line, _, self._received = self._received.partition(b"\n")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise RuntimeError(f"{self.name} wrote {line[:200]!r}, not a JSON object")
        return message

    def adopt_descendants(self) -> list[int]:
        """Remembers the process's current descendants so `stop()` kills any that outlive it."""
        pids = descendants(self.pid)
        self._adopted = [(pid, _start_ticks(pid)) for pid in pids]
        return pids

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace_s: float = 10.0) -> int | None:
        """Ends the process group (SIGTERM, then SIGKILL after `grace_s`) and adopted descendants.

        Returns:
            The process's exit code (None only if it could not be reaped).
        """
        try:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGTERM)
                try:
                    self.process.wait(grace_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.pid, signal.SIGKILL)
                    self.process.wait(5.0)
            # Whatever is left of the group (a worker that ignored SIGTERM while its parent exited).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            for pid, ticks in self._adopted:
                # Only the same process: the pid may have been reused since.
                if ticks is not None and _start_ticks(pid) == ticks:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            return self.process.returncode
        finally:
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            if self._log is not None:
                self._log.close()


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Turns SIGTERM and SIGINT into KeyboardInterrupt inside the block, so that `finally` blocks stop the
    children (SIGINT too, because a shell starting the benchmark in the background makes it ignore SIGINT)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, action in previous.items():
            signal.signal(signum, action)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, *, child: Child | None = None) -> None:
    """Polls `predicate()` every 20 ms until it is true.

    Raises:
        RuntimeError: `timeout_s` passed, or `child` exited meanwhile.
    """
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if child is not None and not child.running():
            raise RuntimeError(f"{child.name} exited with code {child.process.returncode} before {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.02)
