"""What one benchmark run measured: one `Run` per load applied to one server, compared in pairs.

A `Comparison` puts the service's run next to the bare server's run of the same scenario, with the same
generator and settings, and gives their throughput ratio (service / bare: 1.0 means the service costs
nothing over gRPC itself). The table is printed at the end of `python -m bench`; the JSON file holds the same
records plus the run's setup, for comparing runs over time.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

NOT_ERRORS = frozenset({"OK", "CANCELLED"})
# Share of the server core used by other processes above which a run is flagged as disturbed.
NOISE_THRESHOLD = 0.05


def tally(results: Iterable[Mapping[str, Any]], counts_key: str) -> tuple[Counter[str], list[float]]:
    """Adds up the load workers' JSON results: their answer counts under `counts_key`, and every latency (µs)."""
    counts: Counter[str] = Counter()
    latencies: list[float] = []
    for result in results:
        counts.update(result[counts_key])
        latencies.extend(result["latencies_us"])
    return counts, latencies


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (NaN when there are none)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclasses.dataclass(frozen=True)
class Latency:
    """Per-call latency, in milliseconds, as the load generator saw it (queueing included)."""

    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    @classmethod
    def from_micros(cls, values: Iterable[float]) -> Latency:
        ordered = sorted(values)
        if not ordered:
            return cls(math.nan, math.nan, math.nan, math.nan)
        return cls(
            p50_ms=percentile(ordered, 0.50) / 1000,
            p99_ms=percentile(ordered, 0.99) / 1000,
            mean_ms=sum(ordered) / len(ordered) / 1000,
            max_ms=ordered[-1] / 1000,
        )


@dataclasses.dataclass(frozen=True)
class Run:
    """One fixed-duration load against one server.

    Attributes:
        scenario: what was measured, e.g. "CheckEntitlement, h2load".
        server: "service" (ours) or "bare" (the baseline).
        generator: the load generator and its concurrency, e.g. "h2load -c 4 -m 8".
        duration_s: the measured window (warm-up excluded).
        completed: calls that completed in the window, whatever their status.
        failed: calls the generator saw fail (non-200 HTTP or broken streams for h2load; any non-OK gRPC
            status for the Python generator).
        qps: `completed / duration_s`.
        latency: per-call latency over the window.
        server_codes: the service's own `entitlements_rpc_requests_total` increase for the method, by gRPC
            code, over the run (warm-up included); None for the bare server, which keeps no counters.
        cores_busy: busy fractions over the measured window (0..1): "server_process" (the server's CPU time,
            in cores), "server_core" and "load_core" (the whole core, whoever ran on it); None when nothing
            was pinned.
        store_io: for the service, its Valkey's `commands` processed and client-socket `reads` over the run (INFO
            stats); None otherwise.
        samples_us: every call's latency in µs, for merging runs (`merge`); left out of the JSON file.
    """

    scenario: str
    server: str
    generator: str
    duration_s: float
    completed: int
    failed: int
    qps: float
    latency: Latency
    server_codes: Mapping[str, int] | None = None
    cores_busy: Mapping[str, float] | None = None
    store_io: Mapping[str, int] | None = None
    samples_us: tuple[float, ...] = dataclasses.field(default=(), repr=False)

    @property
    def commands_per_read(self) -> float:
        """Redis commands per read of a client socket (NaN when unknown): above 1, reads travelled pipelined."""
        if not self.store_io or not self.store_io.get("reads"):
            return math.nan
        return self.store_io["commands"] / self.store_io["reads"]

    @property
    def grpc_errors(self) -> int:
        """Calls the service answered with an error status (0 when unknown).

        CANCELLED is not an error here: it counts the calls still in flight when the generator stopped and
        reset its streams.
        """
        if self.server_codes is None:
            return 0
        return sum(n for code, n in self.server_codes.items() if code not in NOT_ERRORS)

    @property
    def cpu_us_per_call(self) -> float:
        """The server process's CPU time per completed call, in µs (NaN when unknown).

        Unlike QPS, this hardly moves when other processes share the core, so it is the steadier figure
        on a busy machine.
        """
        if not self.cores_busy or not self.qps:
            return math.nan
        return self.cores_busy.get("server_process", math.nan) * 1e6 / self.qps

    @property
    def noisy(self) -> bool:
        """True when something else took a noticeable share of the server's core during the window."""
        if not self.cores_busy:
            return False
        process = self.cores_busy.get("server_process", math.nan)
        core = self.cores_busy.get("server_core", math.nan)
        return core - process > NOISE_THRESHOLD


def merge(runs: Sequence[Run]) -> Run:
    """One run made of several runs of the same scenario and server (e.g. the two halves of an ABBA sequence).

    Counts and durations add up; latency percentiles are recomputed from all the samples; busy fractions are
    averaged, weighted by duration.
    """
    if not runs:
        raise ValueError("nothing to merge")
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    duration = sum(run.duration_s for run in runs)
    completed = sum(run.completed for run in runs)
    samples = tuple(sample for run in runs for sample in run.samples_us)
    codes: dict[str, int] | None = None
    if all(run.server_codes is not None for run in runs):
        codes = {}
        for run in runs:
            for code, n in (run.server_codes or {}).items():
                codes[code] = codes.get(code, 0) + n
    store_io: dict[str, int] | None = None
    if all(run.store_io for run in runs):
        store_io = {}
        for run in runs:
            for name, n in (run.store_io or {}).items():
                store_io[name] = store_io.get(name, 0) + n
    busy: dict[str, float] | None = None
    if all(run.cores_busy for run in runs):
        busy = {
            key: round(sum((run.cores_busy or {}).get(key, math.nan) * run.duration_s for run in runs) / duration, 3)
            for key in first.cores_busy or {}
        }
    return dataclasses.replace(
        first,
        duration_s=duration,
        completed=completed,
        failed=sum(run.failed for run in runs),
        qps=completed / duration,
        latency=Latency.from_micros(samples),
        server_codes=codes,
        cores_busy=busy,
        store_io=store_io,
        samples_us=samples,
    )


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The service and the bare server under the same load."""

    scenario: str
    service: Run
    bare: Run | None
    note: str = ""

    @property
    def qps_ratio(self) -> float:
        """Service QPS / bare QPS (NaN without a bare run)."""
        if self.bare is None or self.bare.qps == 0:
            return math.nan
        return self.service.qps / self.bare.qps


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _errors(run: Run | None) -> str:
    if run is None:
        return "-"
    if run.server_codes is not None:
        bad = {code: n for code, n in run.server_codes.items() if code not in NOT_ERRORS}
        if bad:
            return ",".join(f"{code}:{n}" for code, n in sorted(bad.items()))
    return str(run.failed)


def _us(run: Run | None) -> str:
    if run is None or math.isnan(run.cpu_us_per_call):
        return "-"
    return f"{run.cpu_us_per_call:.0f}"


def busy_text(run: Run | None) -> str:
    """`server process/server core/load core` busy percentages, `!` appended when the run was disturbed."""
    if run is None or not run.cores_busy:
        return "-"
    values = (run.cores_busy.get(key, math.nan) for key in ("server_process", "server_core", "load_core"))
    text = "/".join("?" if math.isnan(value) else f"{value * 100:.0f}" for value in values)
    return text + (" !" if run.noisy else "")


def simple_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A fixed-width text table: the first column left-aligned, the others right-aligned."""
    everything = [tuple(header), *(tuple(row) for row in rows)]
    widths = [max(len(row[i]) for row in everything) for i in range(len(header))]
    lines = []
    for number, row in enumerate(everything):
        cells = [row[0].ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))]
        lines.append("  ".join(cells))
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def table(comparisons: Sequence[Comparison]) -> str:
    """A fixed-width text table of the comparisons: QPS, ratio, p50/p99 (ms), errors, busy server/load core."""
    header = (
        "scenario",
        "service QPS",
        "bare QPS",
        "ratio",
        "service p50/p99 ms",
        "bare p50/p99 ms",
        "errors svc/bare",
        "CPU µs/call svc/bare",
        "busy % svc",
        "busy % bare",
    )
    rows = [header]
    for c in comparisons:
        bare = c.bare
        rows.append(
            (
                c.scenario,
                f"{c.service.qps:,.0f}",
                "-" if bare is None else f"{bare.qps:,.0f}",
                "-" if math.isnan(c.qps_ratio) else f"{c.qps_ratio:.2f}",
                f"{_ms(c.service.latency.p50_ms)} / {_ms(c.service.latency.p99_ms)}",
                "-" if bare is None else f"{_ms(bare.latency.p50_ms)} / {_ms(bare.latency.p99_ms)}",
                f"{_errors(c.service)} / {_errors(bare)}",
                f"{_us(c.service)} / {_us(bare)}",
                busy_text(c.service),
                busy_text(bare),
            )
        )
    lines = [simple_table(header, rows[1:])]
    notes = [f"  {c.scenario}: {c.note}" for c in comparisons if c.note]
    legend = [
        "",
        "ratio: service QPS / bare QPS under the same load. CPU µs/call: the server process's CPU time per call.",
        "busy %: server process / server core / load core",
        "over the measured window; `!`: other processes took more than "
        f"{NOISE_THRESHOLD:.0%} of the server core (shared machine), so that figure is low.",
        "errors: non-OK gRPC statuses counted by the service (CANCELLED, calls cut when the generator stopped,",
        "left out), or calls the generator saw fail.",
    ]
    return "\n".join(lines + legend + (["", "notes:", *notes] if notes else []))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def write_json(
    path: Path, setup: Mapping[str, Any], comparisons: Sequence[Comparison], extra: Mapping[str, Any]
) -> None:
    """Writes the run's setup, every comparison (with its ratio) and `extra` (e.g. a profile) to `path`."""
    records = []
    for c in comparisons:
        record = dataclasses.asdict(c)
        record["qps_ratio"] = c.qps_ratio
        for side, run in (("service", c.service), ("bare", c.bare)):
            if run is not None:
                del record[side]["samples_us"]
                record[side].update(
                    cpu_us_per_call=run.cpu_us_per_call,
                    grpc_errors=run.grpc_errors,
                    noisy=run.noisy,
                    commands_per_read=run.commands_per_read,
                )
        records.append(record)
    document = {"setup": dict(setup), "comparisons": records, **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(document), indent=2) + "\n")
