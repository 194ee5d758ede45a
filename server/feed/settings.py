"""The change feed's settings (`ENTITLEMENTS_FEED_*`), read with the service's others (`server.config`)."""

from __future__ import annotations

from dataclasses import dataclass

from core.environ import EnvReader
from server.errors import ConfigError

#: The shortest retention: a watcher that reconnects within a minute must find its cursor.
MIN_RETENTION_S = 60.0
#: The repair delay when `ENTITLEMENTS_FEED_REPAIR_S` is unset is the longest a write may take plus this margin, and
#: at least `MIN_DERIVED_REPAIR_S`. The margin covers the replicas' clocks: an intent is stamped by the writer's
#: clock and judged stale by the repairing replica's.
REPAIR_MARGIN_S = 2.0
#: The shortest repair delay derived (with the default Redis timeout and durability wait, 3 s + the margin).
MIN_DERIVED_REPAIR_S = 5.0
#: The longest repair delay `ENTITLEMENTS_FEED_REPAIR_S` may set.
MAX_REPAIR_S = 3600.0


@dataclass(frozen=True)
class FeedSettings:
    """How the service fills the change feed (docs/FEED.md)."""

    # Changes older than this are trimmed from the feed: a cursor older than that is refused (OUT_OF_RANGE).
    retention_s: float = 86_400.0
    # A write whose relay is not confirmed this long after it began is relayed by the repair; also how often each
    # replica's repair looks (with jitter). None: derived from the longest a write may take (`repair_delay_s`).
    repair_s: float | None = None

    @classmethod
    def from_env(cls, reader: EnvReader) -> FeedSettings:
        return cls(
            retention_s=reader.number("ENTITLEMENTS_FEED_RETENTION_S", 86_400.0, minimum=MIN_RETENTION_S),
            repair_s=reader.optional_number("ENTITLEMENTS_FEED_REPAIR_S", minimum=0.1, maximum=MAX_REPAIR_S),
        )

    def repair_delay_s(self, write_bound_s: float) -> float:
        """The repair delay: `repair_s` when set, else `write_bound_s` plus `REPAIR_MARGIN_S`, at least
        `MIN_DERIVED_REPAIR_S`.

        Args:
            write_bound_s: the longest a write may take before its caller gives up (the Redis timeout and the
                durability wait: `server.config.Settings.write_bound_s`).
        """
        return self.repair_s if self.repair_s is not None else _derived_repair_s(write_bound_s)

    def check(self, write_bound_s: float) -> None:
        """Refuses a repair delay set within which a write may still be on its way (a derived one never is).

        Args:
            write_bound_s: as for `repair_delay_s`.

        Raises:
            ConfigError: `repair_s` is set and not above `write_bound_s`.
        """
        if self.repair_s is not None and self.repair_s <= write_bound_s:
            raise ConfigError(
                f"ENTITLEMENTS_FEED_REPAIR_S ({self.repair_s:g} s) must be above the longest a write may take "
                f"({write_bound_s:g} s: ENTITLEMENTS_REDIS_TIMEOUT_S plus the durability wait, "
                "ENTITLEMENTS_WRITE_DURABILITY_TIMEOUT_MS), or the repair could take a write still on its way for one "
                f"whose relay was lost: raise it, or leave it unset for {_derived_repair_s(write_bound_s):g} s"
            )


def _derived_repair_s(write_bound_s: float) -> float:
    return max(MIN_DERIVED_REPAIR_S, write_bound_s + REPAIR_MARGIN_S)
