"""How the clients connect: retry policy, TLS, channel options and per-call metadata."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

__all__ = ["RetryPolicy", "TLSConfig"]

SERVICE_NAME = "entitlements.v1.EntitlementService"

# Keepalive pings find a dead connection (a server that vanished, a NAT or load balancer that dropped the
# flow) during long GetOrderStatus streams, which may sit silent for up to an hour. Five minutes is the
# shortest interval a gRPC server accepts by default (grpc.http2.min_recv_ping_interval_without_data_ms);
# pinging more often makes it close the connection with "too_many_pings". No pings while idle, for the same
# reason. Unary calls do not need keepalive: their deadline catches a dead connection.
_KEEPALIVE_OPTIONS: dict[str, Any] = {
    "grpc.keepalive_time_ms": 300_000,
    "grpc.keepalive_timeout_ms": 20_000,
    "grpc.keepalive_permit_without_calls": 0,
    # Keepalive pings must go out on a stream that receives no data for a long time.
    "grpc.http2.max_pings_without_data": 0,
}

# gRPC clamps retryPolicy.maxAttempts to 5 (and logs an error); refusing more is clearer.
_MAX_ATTEMPTS = 5

_STATUS_CODE_NAMES = frozenset(code.name for code in grpc.StatusCode if code is not grpc.StatusCode.OK)


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Which failed calls gRPC retries by itself, and how long it waits between attempts.

    The policy becomes the channel's gRPC service config (`retryPolicy` for every method of the service), so
    gRPC retries inside the channel, within the call's deadline: before attempt n it waits about
    `min(initial_backoff_s * backoff_multiplier ** (n - 2), max_backoff_s)`, with random jitter. gRPC only
    retries a call whose response has not started, so a stream that already delivered messages is never
    replayed.

    Attributes:
        max_attempts: Attempts in all, the first included; 2..5 (gRPC clamps anything above 5).
        initial_backoff_s: Upper bound of the first wait, in seconds; > 0.
        max_backoff_s: Upper bound of any wait, in seconds; > 0.
        backoff_multiplier: How much the bound grows per attempt; > 0.
        retryable_status_codes: gRPC status code names (e.g. "UNAVAILABLE") that trigger a retry; not empty.
            The default retries only UNAVAILABLE, which the service returns when its store could not be
            reached in time and nothing was written.

    Raises:
        ValueError: A value is out of range or a code name is unknown.
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    backoff_multiplier: float = 2.0
    retryable_status_codes: tuple[str, ...] = ("UNAVAILABLE",)

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= _MAX_ATTEMPTS:
            raise ValueError(
                f"max_attempts must be 2..{_MAX_ATTEMPTS} (gRPC's limit); pass retry_policy=None for no retries"
            )
        if self.initial_backoff_s <= 0 or self.max_backoff_s <= 0:
            raise ValueError("initial_backoff_s and max_backoff_s must be > 0")
        if self.backoff_multiplier <= 0:
            raise ValueError("backoff_multiplier must be > 0")
        if not self.retryable_status_codes:
            raise ValueError("retryable_status_codes must not be empty")
        unknown = set(self.retryable_status_codes) - _STATUS_CODE_NAMES
        if unknown:
            raise ValueError(f"unknown or non-error status codes: {sorted(unknown)}")

    def service_config_json(self) -> str:
        """Returns the gRPC service config (JSON) that applies this policy to every method of the service."""
        config = {
            "methodConfig": [
                {
                    "name": [{"service": SERVICE_NAME}],
                    "retryPolicy": {
                        "maxAttempts": self.max_attempts,
                        "initialBackoff": _duration_json(self.initial_backoff_s),
                        "maxBackoff": _duration_json(self.max_backoff_s),
                        "backoffMultiplier": self.backoff_multiplier,
                        "retryableStatusCodes": list(self.retryable_status_codes),
                    },
                }
            ]
        }
        return json.dumps(config, separators=(",", ":"))

    def channel_options(self) -> list[tuple[str, Any]]:
        """Returns the channel options that turn this policy on."""
        # gRPC resends the request message it serialized for the first attempt, byte for byte, so every
        # retry of a Grant or Revoke carries the same idempotency key and the server applies it at most once.
        return [("grpc.enable_retries", 1), ("grpc.service_config", self.service_config_json())]


@dataclasses.dataclass(frozen=True, slots=True)
class TLSConfig:
    """TLS for the channel, optionally with a client certificate (mTLS).

    All fields are PEM-encoded bytes. `TLSConfig()` verifies the server against the system's (gRPC's bundled)
    root certificates.

    Attributes:
        root_certificates: CA certificates that verify the server; None for the default roots.
        private_key: The client's private key, for mTLS; set together with `certificate_chain`.
        certificate_chain: The client's certificate chain, for mTLS; set together with `private_key`.
        server_name_override: The name to verify the server's certificate against instead of the target's
            host (and to send as SNI/authority), e.g. when connecting by IP address. Not for production use
            against untrusted networks unless you know why you need it.

    Raises:
        ValueError: Only one of `private_key` and `certificate_chain` is set.
    """

    root_certificates: bytes | None = None
    private_key: bytes | None = dataclasses.field(default=None, repr=False)
    certificate_chain: bytes | None = None
    server_name_override: str | None = None

    def __post_init__(self) -> None:
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ValueError("private_key and certificate_chain must be given together (mTLS)")

    @classmethod
    def from_files(
        cls,
        *,
        root_certificates_file: str | os.PathLike[str] | None = None,
        private_key_file: str | os.PathLike[str] | None = None,
        certificate_chain_file: str | os.PathLike[str] | None = None,
        server_name_override: str | None = None,
    ) -> TLSConfig:
        """Reads the PEM files given and returns the configuration.

        Args:
            root_certificates_file: CA bundle that verifies the server; None for the default roots.
            private_key_file: The client's private key, for mTLS.
            certificate_chain_file: The client's certificate chain, for mTLS.
            server_name_override: See the class attribute.

        Raises:
            OSError: A file cannot be read.
            ValueError: Only one of the key and the chain is given.
        """
        return cls(
            root_certificates=_read_optional(root_certificates_file),
            private_key=_read_optional(private_key_file),
            certificate_chain=_read_optional(certificate_chain_file),
            server_name_override=server_name_override,
        )


def resolve_tls(tls: TLSConfig | bool | None) -> TLSConfig | None:
    """Maps the clients' `tls` argument to a configuration: True means TLS with the default roots."""
    if tls is True:
        return TLSConfig()
    if tls is None or tls is False:
        return None
    return tls


def channel_credentials(tls: TLSConfig) -> grpc.ChannelCredentials:
    """Returns the gRPC credentials for a TLS configuration."""
    return grpc.ssl_channel_credentials(
        root_certificates=tls.root_certificates,
        private_key=tls.private_key,
        certificate_chain=tls.certificate_chain,
    )


def channel_options(
    retry_policy: RetryPolicy | None,
    tls: TLSConfig | None,
    extra: Sequence[tuple[str, Any]],
) -> tuple[tuple[str, Any], ...]:
    """Returns the channel options: keepalive, retries, TLS name override, then the caller's own.

    The caller's options come last and replace ours of the same name, rather than being appended next to
    them and leaving which one wins to gRPC.
    """
    options = dict(_KEEPALIVE_OPTIONS)
    if retry_policy is not None:
        options.update(retry_policy.channel_options())
    if tls is not None and tls.server_name_override:
        options["grpc.ssl_target_name_override"] = tls.server_name_override
    options.update(extra)
    return tuple(options.items())


def call_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """Returns the metadata sent with every call: the API key as a bearer token, when there is one.

    Plain metadata rather than gRPC call credentials, which gRPC refuses to send over an insecure channel:
    development servers and TLS-terminating sidecars listen without TLS.
    """
    if api_key is None:
        return ()
    return (("authorization", f"Bearer {api_key}"),)


def _duration_json(seconds: float) -> str:
    # Service-config durations are decimal seconds with an "s" suffix and at most 9 fractional digits;
    # repr() of a float could produce "1e-05s", which gRPC rejects.
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def _read_optional(path: str | os.PathLike[str] | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()
