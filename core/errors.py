"""The errors both processes raise. Each process's own tree (`server.errors`, `webhook_gateway.errors`) builds on
these: the service answers `StoreUnavailable` with UNAVAILABLE, the gateway with 503.

Exception
├── ConfigError         bad settings; the process refuses to start (each process subclasses it)
├── PortInUse           a port the process would listen on is taken by another process; it refuses to start
└── StoreUnavailable    Redis could not be reached or answered too slowly; the caller may retry
    └── NotDurable      written, but not made durable (fsynced, replicated) within the time allowed
"""

from __future__ import annotations


class ConfigError(Exception):
    """The configuration is invalid or unsafe. The message names the setting, never a secret."""


class PortInUse(Exception):
    """A port the process would listen on is taken by another process. The message names the address."""


class StoreUnavailable(Exception):
    """Redis did not answer in time (or is loading, read-only, failing over); the call may be retried, with the
    same idempotency key for a write."""


class NotDurable(StoreUnavailable):
    """A write reached Redis but was not made durable as configured (the append-only file fsynced, or the replicas
    acknowledging it) within the time allowed. The write stays; the caller must not acknowledge it, and its retry
    waits again.

    Attributes:
        mode: the durability that was not reached (`local`, `replicas`).
        waited_s: how long the write and its wait took.
    """

    def __init__(self, message: str, *, mode: str, waited_s: float) -> None:
        super().__init__(message)
        self.mode = mode
        self.waited_s = waited_s
