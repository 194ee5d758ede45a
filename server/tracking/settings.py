"""Order tracking's settings (`ENTITLEMENTS_ORDER_*`, `ENTITLEMENTS_MAX_ORDER_TRACKERS`,
`ENTITLEMENTS_TRACKING_LEASE_S`), read with the service's others (`server.config`)."""

from __future__ import annotations

from dataclasses import dataclass

from core.environ import EnvReader

#: The longest `max_wait` a GetOrderStatus request may ask for.
MAX_ORDER_WAIT_S = 3600.0


@dataclass(frozen=True)
class TrackingSettings:
    """How GetOrderStatus follows orders at the payment provider (see docs/ORDER_STATUS.md). Where to reach the
    provider is the provider's own settings (`providers.xsolla.OrderSettings`)."""

    # No status from the socket for an order this long (and no terminal status): that order falls back to polling.
    ws_silence_s: float = 300.0
    # Time between two status lookups (Get order) for one order (Xsolla's SDKs: 3 s).
    poll_interval_s: float = 3.0
    # How long a stream follows an order when the request does not say (Xsolla recommends 10 minutes).
    max_wait_s: float = 600.0
    # Orders followed at once by this replica; a stream that would need one more is RESOURCE_EXHAUSTED.
    max_trackers: int = 10_000
    # GetOrderStatus streams one API key may hold open at once on this replica, so that one caller cannot take
    # every tracker; None: half of `max_trackers`. A stream beyond it is RESOURCE_EXHAUSTED.
    streams_per_key: int | None = None
    # After DONE from Xsolla, how long to wait for this service's grant of the order before ending (0: not at all).
    grant_wait_s: float = 30.0
    # One replica follows each order at the provider: it holds the order's lease in Redis, renewed every third of
    # this; when it dies another replica watching the order takes it over within this plus a third of it.
    lease_s: float = 10.0

    @classmethod
    def from_env(cls, reader: EnvReader) -> TrackingSettings:
        streams_per_key = reader.integer("ENTITLEMENTS_ORDER_STREAMS_PER_KEY", 0, minimum=1)
        return cls(
            ws_silence_s=reader.number("ENTITLEMENTS_ORDER_WS_SILENCE_S", 300.0, minimum=0.1),
            poll_interval_s=reader.number("ENTITLEMENTS_ORDER_POLL_INTERVAL_S", 3.0, minimum=0.01),
            max_wait_s=reader.number("ENTITLEMENTS_ORDER_MAX_WAIT_S", 600.0, minimum=1.0, maximum=MAX_ORDER_WAIT_S),
            max_trackers=reader.integer("ENTITLEMENTS_MAX_ORDER_TRACKERS", 10_000, minimum=1),
            streams_per_key=streams_per_key or None,
            grant_wait_s=reader.number("ENTITLEMENTS_ORDER_GRANT_WAIT_S", 30.0, minimum=0.0),
            lease_s=reader.number("ENTITLEMENTS_TRACKING_LEASE_S", 10.0, minimum=0.5, maximum=300.0),
        )

    @property
    def stream_limit_per_key(self) -> int:
        """The streams one API key may hold open at once on this replica (`streams_per_key` or its default)."""
        if self.streams_per_key is not None:
            return self.streams_per_key
        return max(1, self.max_trackers // 2)
