"""What one process uses, from /proc: resident memory and CPU time (all of its threads).

The stream benchmark divides a server's resident-memory growth by the streams it holds, and its CPU time over a
quiet hold by the hold's length.
"""

from __future__ import annotations

import os
from pathlib import Path


def rss_bytes(pid: int) -> int:
    """The process's resident set size (VmRSS of /proc/<pid>/status), in bytes.

    Raises:
        OSError: the process is gone.
        RuntimeError: the kernel reports no VmRSS (a kernel thread).
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by the process's living threads, in seconds.

    Sums the nanosecond run times of /proc/<pid>/task/*/schedstat, much finer than the 10 ms clock ticks of
    /proc/<pid>/stat, which matters for a server that is nearly idle. A thread that ends between two readings
    takes its time with it, so over a window the figure can only be low, never high. Falls back to the clock
    ticks (utime + stime) where the kernel has no schedstat.
    """
    total, found = 0, False
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
            found = True
        except (OSError, IndexError, ValueError):  # a thread that just ended, or no schedstat in this kernel
            continue
    if found:
        return total / 1e9
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
