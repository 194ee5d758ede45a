"""The gateway's settings, read once from the environment at start-up.

Every variable is listed with its default in the README. They are prefixed `GATEWAY_`, except `REDIS_URL`,
`REDIS_CLUSTER` and `ENTITLEMENTS_PROJECTS_FILE`, which the gateway shares with the service. The provider's own
settings (its webhook secrets, from the projects file or its own variables) are the provider's
(`providers.xsolla.settings`); the composition root reads both. Secrets are kept out of `repr()` and out of
every error message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from core.durability import SETTING_MODES
from core.environ import EnvReader
from webhook_gateway.errors import ConfigError
from webhook_gateway.sources import Network, parse_networks

USER_DIRECTORIES = ("allow_all", "http")
#: `GATEWAY_DURABILITY`: what a 204 waits for (`webhook_gateway.durability`).
DURABILITY_MODES = SETTING_MODES


@dataclass(frozen=True)
class GatewaySettings:
    """Typed configuration of the webhook gateway (the provider's secrets are its own settings)."""

    host: str = "127.0.0.1"
    port: int = 8080
    # None: `/webhooks/<provider name>`.
    path: str | None = None
    # The projects file the service reads too (`core.projects`); None: the provider's single-project variables.
    projects_file: Path | None = None
    # None: the caller passes a Redis client to `Gateway` (in-process use); `python -m webhook_gateway` needs it.
    redis_url: str | None = None
    redis_cluster: bool = False
    redis_timeout_s: float = 2.0
    redis_max_connections: int = 32
    max_body_bytes: int = 1024 * 1024
    request_timeout_s: float = 10.0
    event_partitions: int = 1
    dedup_ttl_h: float = 72.0
    # What an event waits for before its 204: auto, local (the AOF fsynced), replicas (n replicas have it), none.
    durability: str = "auto"
    durability_replicas: int = 1
    durability_timeout_ms: int = 1000
    allowed_networks: tuple[Network, ...] = ()
    trusted_proxy_header: str | None = None
    trusted_proxy_hops: int = 1
    user_directory: str = "allow_all"
    user_directory_url: str | None = None
    user_directory_timeout_s: float = 2.0
    user_directory_token: str | None = field(default=None, repr=False)
    # None: no metrics listener of its own (the process that embeds the gateway serves the registry).
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9465
    shutdown_grace_s: float = 10.0
    log_level: str = "info"
    log_json: bool | None = None  # None: JSON unless stderr is a terminal

    @property
    def dedup_ttl_s(self) -> int:
        return int(self.dedup_ttl_h * 3600)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        named_networks: Mapping[str, Sequence[str]] = MappingProxyType({}),
    ) -> GatewaySettings:
        """Reads the settings from environment variables.

        Args:
            env: the variables (default `os.environ`).
            named_networks: names `GATEWAY_ALLOWED_NETWORKS` may use for lists of networks (the provider's
                published sender networks, e.g. `xsolla`).

        Raises:
            ConfigError: a variable is malformed or a file it names cannot be read.
        """
        env = os.environ if env is None else env
        reader = EnvReader(env, ConfigError)
        directory = reader.text("GATEWAY_USER_DIRECTORY", "allow_all").lower()
        try:
            networks = parse_networks(reader.text("GATEWAY_ALLOWED_NETWORKS", ""), named_networks)
        except ValueError as exc:
            raise ConfigError(f"GATEWAY_ALLOWED_NETWORKS: {exc}") from None
        metrics_port_text = reader.text("GATEWAY_METRICS_PORT", "").lower()
        projects_file = reader.text("ENTITLEMENTS_PROJECTS_FILE", "")
        log_json_text = reader.text("GATEWAY_LOG_JSON", "")
        settings = cls(
            host=reader.text("GATEWAY_HOST", "127.0.0.1"),
            port=reader.integer("GATEWAY_PORT", 8080, minimum=0, maximum=65535),
            path=reader.text("GATEWAY_PATH", "") or None,
            projects_file=Path(projects_file) if projects_file else None,
            redis_url=reader.text("REDIS_URL", "") or None,
            redis_cluster=reader.boolean("REDIS_CLUSTER", False),
            redis_timeout_s=reader.number("GATEWAY_REDIS_TIMEOUT_S", 2.0, minimum=0.05),
            redis_max_connections=reader.integer("GATEWAY_REDIS_MAX_CONNECTIONS", 32, minimum=1),
            max_body_bytes=reader.integer("GATEWAY_MAX_BODY_BYTES", 1024 * 1024, minimum=1024),
            request_timeout_s=reader.number("GATEWAY_REQUEST_TIMEOUT_S", 10.0, minimum=0.1),
            event_partitions=reader.integer("GATEWAY_EVENT_PARTITIONS", 1, minimum=1, maximum=1024),
            dedup_ttl_h=reader.number("GATEWAY_DEDUP_TTL_H", 72.0, minimum=48.0),
            durability=reader.text("GATEWAY_DURABILITY", "auto").lower(),
            durability_replicas=reader.integer("GATEWAY_DURABILITY_REPLICAS", 1, minimum=1),
            durability_timeout_ms=reader.integer("GATEWAY_DURABILITY_TIMEOUT_MS", 1000, minimum=1),
            allowed_networks=networks,
            trusted_proxy_header=reader.text("GATEWAY_TRUSTED_PROXY_HEADER", "") or None,
            trusted_proxy_hops=reader.integer("GATEWAY_TRUSTED_PROXY_HOPS", 1, minimum=1, maximum=16),
            user_directory=directory,
            user_directory_url=reader.text("GATEWAY_USER_DIRECTORY_URL", "") or None,
            user_directory_timeout_s=reader.number("GATEWAY_USER_DIRECTORY_TIMEOUT_S", 2.0, minimum=0.05),
            user_directory_token=reader.text("GATEWAY_USER_DIRECTORY_TOKEN", "") or None,
            metrics_host=reader.text("GATEWAY_METRICS_HOST", "127.0.0.1"),
            metrics_port=None
            if metrics_port_text == "off"
            else reader.integer("GATEWAY_METRICS_PORT", 9465, minimum=0, maximum=65535),
            shutdown_grace_s=reader.number("GATEWAY_SHUTDOWN_GRACE_S", 10.0, minimum=0.0),
            log_level=reader.text("GATEWAY_LOG_LEVEL", "info").lower(),
            log_json=None if not log_json_text else reader.boolean("GATEWAY_LOG_JSON", True),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Checks the combination of settings (`from_env` calls it; call it for hand-built settings).

        Raises:
            ConfigError: a malformed path, an `http` directory without a URL, an unknown durability mode, or a
                durability timeout that does not fit in the request's or Redis's.
        """
        path = self.path
        if path is not None and (not path.startswith("/") or path.endswith("/") or "{" in path or "}" in path):
            raise ConfigError("GATEWAY_PATH must start with '/', must not end with '/' and must not hold braces")
        if self.user_directory not in USER_DIRECTORIES:
            raise ConfigError(f"GATEWAY_USER_DIRECTORY must be one of {', '.join(USER_DIRECTORIES)}")
        if self.user_directory == "http" and not self.user_directory_url:
            raise ConfigError("GATEWAY_USER_DIRECTORY=http needs GATEWAY_USER_DIRECTORY_URL")
        if self.user_directory_url and not self.user_directory_url.startswith(("http://", "https://")):
            raise ConfigError("GATEWAY_USER_DIRECTORY_URL must be an http:// or https:// URL")
        if self.trusted_proxy_header is not None and not self.trusted_proxy_header.isascii():
            raise ConfigError("GATEWAY_TRUSTED_PROXY_HEADER must be a header name")
        self._check_durability()

    def _check_durability(self) -> None:
        if self.durability not in DURABILITY_MODES:
            raise ConfigError(f"GATEWAY_DURABILITY must be one of {', '.join(DURABILITY_MODES)}")
        if self.durability_replicas < 1:
            raise ConfigError("GATEWAY_DURABILITY_REPLICAS must be at least 1")
        if self.durability_timeout_ms < 1:
            raise ConfigError("GATEWAY_DURABILITY_TIMEOUT_MS must be at least 1 (Redis reads 0 as: wait forever)")
        timeout_s = self.durability_timeout_ms / 1000
        if timeout_s >= self.request_timeout_s:
            raise ConfigError(
                f"GATEWAY_DURABILITY_TIMEOUT_MS ({self.durability_timeout_ms}) must be below GATEWAY_REQUEST_TIMEOUT_S "
                f"({self.request_timeout_s:g} s): the wait happens within the request"
            )
        if timeout_s >= self.redis_timeout_s:
            # The server holds the connection for the whole wait; a socket timeout shorter than it would cut the
            # wait off and retry the append instead of reporting that it was not durable.
            raise ConfigError(
                f"GATEWAY_DURABILITY_TIMEOUT_MS ({self.durability_timeout_ms}) must be below GATEWAY_REDIS_TIMEOUT_S "
                f"({self.redis_timeout_s:g} s), the connection's read timeout during the wait"
            )
