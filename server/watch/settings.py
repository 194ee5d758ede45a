"""WatchEntitlements' settings (`ENTITLEMENTS_WATCH_*`), read with the service's others (`server.config`)."""

from __future__ import annotations

from dataclasses import dataclass

from core.environ import EnvReader


@dataclass(frozen=True)
class WatchSettings:
    """WatchEntitlements on this replica (docs/WATCH.md)."""

    # Streams open at once; one more is RESOURCE_EXHAUSTED.
    max_streams: int = 10_000
    # Changes one stream may have waiting to be sent; past it the stream ends UNAVAILABLE (the caller resumes).
    max_queued: int = 10_000

    @classmethod
    def from_env(cls, reader: EnvReader) -> WatchSettings:
        return cls(
            max_streams=reader.integer("ENTITLEMENTS_WATCH_MAX_STREAMS", 10_000, minimum=1, maximum=1_000_000),
            max_queued=reader.integer("ENTITLEMENTS_WATCH_MAX_QUEUED", 10_000, minimum=100, maximum=10_000_000),
        )
