"""The change feed's settings (`ENTITLEMENTS_FEED_*`), read with the service's others (`server.config`)."""

from __future__ import annotations

from dataclasses import dataclass

from core.environ import EnvReader
from server.errors import ConfigError

#: The shortest retention: a watcher that reconnects within a minute must find its cursor.
MIN_RETENTION_S = 60.0


@dataclass(frozen=True)
class FeedSettings:
    """How the service fills the change feed (docs/FEED.md)."""

    # Changes older than this are trimmed from the feed: a cursor older than that is refused (OUT_OF_RANGE).
    retention_s: float = 86_400.0
    # A write whose relay is not confirmed this long after it began is relayed by the repair; also how often each
    # replica's repair looks (with jitter).
    repair_s: float = 5.0

    @classmethod
    def from_env(cls, reader: EnvReader) -> FeedSettings:
        return cls(
            retention_s=reader.number("ENTITLEMENTS_FEED_RETENTION_S", 86_400.0, minimum=MIN_RETENTION_S),
            repair_s=reader.number("ENTITLEMENTS_FEED_REPAIR_S", 5.0, minimum=0.1, maximum=3600.0),
        )

    def check(self, write_bound_s: float) -> None:
        """Refuses a repair delay within which a write may still be on its way.

        Args:
            write_bound_s: the longest a write may take before its caller gives up (the Redis timeout and the
                durability wait).

        Raises:
            ConfigError: `repair_s` is not above `write_bound_s`.
        """
        if self.repair_s <= write_bound_s:
            raise ConfigError(
                f"ENTITLEMENTS_FEED_REPAIR_S ({self.repair_s:g} s) must be above the longest a write may take "
                f"({write_bound_s:g} s: ENTITLEMENTS_REDIS_TIMEOUT_S plus the durability wait), or the repair could "
                "take a write still on its way for one whose relay was lost"
            )
