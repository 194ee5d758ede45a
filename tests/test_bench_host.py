"""`bench.host`: the probe of the host's speed and the steal share that `make bench` records with every run."""

from __future__ import annotations

import os
from pathlib import Path

from bench import host


def test_the_loop_probe_runs_in_a_fresh_interpreter_pinned_or_not() -> None:
    """A positive time per iteration, pinned to a core this process may use and unpinned."""
    core = min(os.sched_getaffinity(0))
    assert host.loop_ns([core]) > 0
    assert host.loop_ns(None) > 0


def test_the_steal_share_is_read_from_the_cpu_line(tmp_path: Path) -> None:
    """Steal over total between two readings of /proc/stat's `cpu` line; zeros without the column or the file."""
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 50 0 25 400 5 0 2 18 0 0\n")
    before = host.CpuTimes.read(stat)
    assert before == host.CpuTimes(steal=35, total=1000)
    stat.write_text("cpu  200 0 100 1500 20 0 10 170 0 0\n")
    assert host.CpuTimes.read(stat).steal_share_since(before) == 0.135  # 135 of 1,000 ticks
    assert before.steal_share_since(before) is None
    stat.write_text("cpu  100 0 50 800\n")
    assert host.CpuTimes.read(stat) == host.CpuTimes(steal=0, total=950)
    assert host.CpuTimes.read(tmp_path / "absent") == host.CpuTimes(0, 0)


def test_the_line_names_both_probes_and_the_steal() -> None:
    assert host.describe(30.5) == "host: a Python loop iteration takes 30.5 ns on the server core"
    assert host.describe(30.5, 90.0, 0.0123) == (
        "host: a Python loop iteration takes 30.5 ns on the server core at the start, 90 ns at the end; "
        "the hypervisor took 1.2% of the CPU time (steal)"
    )
