"""Cores: naming them, pinning processes to them, and how busy they were during a measured window.

Knowing how busy each core was tells which side limited a run: the server core at ~100% with the load core
well below means the server was the bottleneck, as intended; a load core at ~100% means the generator was.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path


def cpu_list(cores: Sequence[int] | None) -> str:
    """The `taskset -c` form of a core set ("0", "0,1"), or "any" when not pinned."""
    return "any" if not cores else ",".join(str(c) for c in sorted(cores))


def pin_process(pid: int, cores: Sequence[int]) -> None:
    """Moves every thread of process `pid` to `cores` (what `taskset -a -p -c` does)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(int(task.name), set(cores))


def _core_times() -> dict[int, tuple[int, int]]:
    """Per core: (busy, total) jiffies since boot, from /proc/stat."""
    times: dict[int, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        idle = values[3] + values[4]
        times[int(name[3:])] = (sum(values) - idle, sum(values))
    return times


def core_times() -> dict[int, tuple[int, int]]:
    """A reading of every core's (busy, total) jiffies, for `core_busy_between`."""
    return _core_times()


def core_busy_between(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> dict[int, float]:
    """How busy each core was between two `core_times()` readings (0..1)."""
    busy: dict[int, float] = {}
    for core, (busy_after, total_after) in after.items():
        busy_before, total_before = before.get(core, (busy_after, total_after))
        if total_after > total_before:
            busy[core] = round((busy_after - busy_before) / (total_after - total_before), 3)
    return busy


def _process_ticks(pid: int) -> int | None:
    """CPU time of process `pid`, all its threads, user plus system, in clock ticks (None once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 of /proc/<pid>/stat


class BusyWindow:
    """Measures how busy each core, and one process, were between two wall-clock times (background thread).

    The process figure tells whether the server under test had its core to itself: a core 100% busy with the
    server process at 80% of it means something else ran there (the machine is shared).

    Args:
        start_at: `time.time()` at which to take the first reading.
        end_at: `time.time()` of the second reading.
        pid: the process whose share of one core to measure, if any.
    """

    def __init__(self, start_at: float, end_at: float, pid: int | None = None) -> None:
        self._start_at = start_at
        self._end_at = end_at
        self._pid = pid
        self._result: dict[int, float] = {}
        self.process_busy: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._measure, name="busy-window", daemon=True)
        self._thread.start()

    def _measure(self) -> None:
        if self._stop.wait(max(0.0, self._start_at - time.time())):
            return
        first, first_process, first_at = _core_times(), self._ticks(), time.monotonic()
        if self._stop.wait(max(0.0, self._end_at - time.time())):
            return
        second, second_process, second_at = _core_times(), self._ticks(), time.monotonic()
        if first_process is not None and second_process is not None and second_at > first_at:
            ticks_per_s = os.sysconf("SC_CLK_TCK")
            self.process_busy = round((second_process - first_process) / ticks_per_s / (second_at - first_at), 3)
        self._result.update(core_busy_between(first, second))

    def _ticks(self) -> int | None:
        return None if self._pid is None else _process_ticks(self._pid)

    def result(self) -> dict[int, float]:
        """Waits for the window to end (or gives up at once if the run ended early) and returns core -> busy."""
        if time.time() < self._end_at - 0.5:
            self._stop.set()  # the run ended before the window: no figure rather than a wrong one
        self._thread.join()
        return dict(self._result)
