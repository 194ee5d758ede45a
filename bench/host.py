"""How fast the host ran during a benchmark: a fixed pure-Python loop timed on the server core at the start and at
the end of the run, and the share of the CPU time the hypervisor took (steal) in between.

On a shared machine the absolute figures (events per second, µs of CPU per call) move with what the neighbours do,
by a factor of three on this project's machine within a day, while the ratios against a baseline measured in the
same run hold. These readings tell a slow host from a slow change when runs of different days are compared.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Iterations of the probe's loop: about a fifth of a second on a quiet core.
LOOP = 2_000_000
#: The probe: best of three timings of a loop of additions (the interpreter's own speed, no I/O, no allocation
#: beyond small ints), printed in seconds.
_PROBE = f"""
import time
best = None
for _ in range(3):
    started = time.perf_counter()
    total = 0
    for number in range({LOOP}):
        total += number
    elapsed = time.perf_counter() - started
    best = elapsed if best is None else min(best, elapsed)
print(best)
"""


def loop_ns(cores: Sequence[int] | None) -> float:
    """Nanoseconds per iteration of the probe's loop, in a fresh interpreter pinned to `cores` (None: unpinned).

    Raises:
        subprocess.CalledProcessError, subprocess.TimeoutExpired: the probe failed or hung.
    """
    command = [sys.executable, "-c", _PROBE]
    if cores:
        command = ["taskset", "-c", ",".join(str(core) for core in cores), *command]
    out = subprocess.run(  # noqa: S603  # this interpreter, a fixed program, no shell
        command, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    return round(float(out) / LOOP * 1e9, 1)


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """The machine's CPU time since boot, from the `cpu` line of /proc/stat, in clock ticks."""

    steal: int
    total: int

    @classmethod
    def read(cls, stat: Path = Path("/proc/stat")) -> CpuTimes:
        """Now's reading; zeros where the kernel reports no steal column (not a virtual machine, or no /proc)."""
        try:
            for line in stat.read_text().splitlines():
                name, *fields = line.split()
                if name == "cpu":
                    # user nice system idle iowait irq softirq steal (guest time is already counted in user)
                    values = [int(v) for v in fields[:8]]
                    return cls(values[7] if len(values) == 8 else 0, sum(values))
        except (OSError, ValueError):
            pass
        return cls(0, 0)

    def steal_share_since(self, before: CpuTimes) -> float | None:
        """The share (0..1) of the CPU time between `before` and this reading that the hypervisor gave to other
        guests; None when no time passed."""
        total = self.total - before.total
        return None if total <= 0 else round((self.steal - before.steal) / total, 4)


def describe(start_ns: float, end_ns: float | None = None, steal: float | None = None) -> str:
    """One line for the run's header or end: the probe's speed (and the steal share, when known)."""
    text = f"host: a Python loop iteration takes {start_ns:g} ns on the server core"
    if end_ns is not None:
        text += f" at the start, {end_ns:g} ns at the end"
    if steal is not None:
        text += f"; the hypervisor took {steal:.1%} of the CPU time (steal)"
    return text
