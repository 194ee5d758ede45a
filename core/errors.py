"""The errors both processes raise. Each process's own tree (`server.errors`, `webhook_gateway.errors`) builds on
these: the service answers `StoreUnavailable` with UNAVAILABLE, the gateway with 503.

Exception
├── ConfigError         bad settings; the process refuses to start (each process subclasses it)
└── StoreUnavailable    Redis could not be reached or answered too slowly; the caller may retry
"""

from __future__ import annotations


class ConfigError(Exception):
    """The configuration is invalid or unsafe. The message names the setting, never a secret."""


class StoreUnavailable(Exception):
    """Redis did not answer in time (or is loading, read-only, failing over); the call may be retried, with the
    same idempotency key for a write."""
