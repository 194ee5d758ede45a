"""The service's settings, read once from the environment at start-up.

Every setting is listed with its default in the README's configuration table. Durations carry their unit in the
name (`_s`, `_ms`, `_days`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from core.durability import SETTING_MODES
from core.environ import EnvReader
from core.projects import CATALOG_FILE, CATALOG_NONE, SANDBOX_POLICIES, Project, Projects
from server.auth import ApiKey, parse_api_keys
from server.catalog import Catalog
from server.errors import ConfigError
from server.feed.settings import FeedSettings
from server.reconcile.settings import ReconcileSettings
from server.tracking.settings import TrackingSettings
from server.watch.settings import WatchSettings


@dataclass(frozen=True)
class TLSSettings:
    """Server-side TLS for the gRPC and HTTP/JSON ports; with `client_ca_file`, clients must present a certificate
    (mTLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass(frozen=True)
class ConsumerSettings:
    """How the service consumes the webhook event streams (see docs/CONSUMER.md)."""

    # Run the consumer in this process. Off: this replica serves gRPC only; another one must consume.
    enabled: bool = True
    # Entries read per XREADGROUP / XAUTOCLAIM call.
    batch: int = 64
    # How long one XREADGROUP waits for new entries. Stopping does not wait for it (a blocked read is cancelled).
    block_ms: int = 1000
    # A delivered entry unacknowledged this long (its consumer died or failed it) is claimed by another consumer.
    claim_idle_s: float = 30.0
    # Deliveries after which an entry that still fails is moved to the dead-letter stream.
    max_deliveries: int = 5
    # Acknowledged entries older than this are trimmed from the event streams (0: never trimmed).
    retention_days: float = 7.0
    # How often the consumer looks for projects whose events it does not read yet (registered by the gateway).
    projects_refresh_s: float = 5.0


#: The most service processes `ENTITLEMENTS_PROCESSES` may ask for.
MAX_PROCESSES = 256


@dataclass(frozen=True)
class ConsoleSettings:
    """The support console (`server.console`, docs/CONSOLE.md): a web page on its own port."""

    enabled: bool = True
    host: str = "127.0.0.1"
    # 0: a free port (tests).
    port: int = 9470
    # A session unused this long is forgotten: its operator logs in again.
    session_idle_s: float = 1800.0
    # Mark the session cookie Secure (always so when the console serves TLS itself): set it behind a proxy that
    # terminates TLS.
    secure_cookie: bool = False
    # Failed logins one client address may make per minute; more are refused without checking the key.
    login_failures_per_minute: int = 10


@dataclass(frozen=True)
class HttpSettings:
    """The HTTP/JSON API (`server.http_api`, docs/HTTP_API.md): every RPC as JSON over HTTP on its own port, with the
    gRPC port's TLS."""

    enabled: bool = True
    host: str = "127.0.0.1"
    # 0: a free port (tests).
    port: int = 8081
    # The largest request body accepted; larger is 413. A Grant at its limits (32 metadata entries, a reason, all
    # escaped) is well under it.
    max_body_bytes: int = 256 * 1024
    # An SSE comment sent on a GetOrderStatus stream after this long without an event, so that proxies and load
    # balancers do not close it as idle.
    sse_heartbeat_s: float = 15.0
    # A connection idle this long between two requests is closed.
    keepalive_timeout_s: float = 75.0
    # SO_REUSEPORT on the port: set for a group's workers (`server.group`), never from the environment.
    reuse_port: bool = False


@dataclass(frozen=True)
class Settings:
    """Typed configuration of the service process."""

    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    # Service processes sharing the ports (`server.group`); `grpc_reuse_port`: set for its workers, not from env.
    processes: int = 1
    grpc_reuse_port: bool = False
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    # With `processes` > 1: worker i serves its metrics on this port + i; None: the metrics port + 1 (0: free ports).
    worker_metrics_port: int | None = None
    # None: start the embedded Redis (Valkey) server persisting to `data_dir`.
    redis_url: str | None = None
    # REDIS_URL is the embedded store of the group's parent (`server.group`): set for its workers, not from env.
    redis_from_group: bool = False
    redis_cluster: bool = False
    redis_timeout_s: float = 2.0
    redis_max_connections: int = 64
    data_dir: Path = Path("var")
    appendfsync: str = "always"
    idempotency_ttl_days: float = 7.0
    api_keys: tuple[ApiKey, ...] = ()
    insecure_dev_mode: bool = False
    tls: TLSSettings | None = None
    shutdown_grace_s: float = 10.0
    health_check_interval_s: float = 5.0
    log_level: str = "info"
    log_json: bool | None = None  # None: JSON unless stderr is a terminal
    # How many streams the webhook events are spread over; must equal the gateway's.
    event_partitions: int = 1
    # The projects served (ENTITLEMENTS_PROJECTS_FILE, or the single-project variables): see core.projects.
    projects: Projects = field(default_factory=Projects)
    # Project id -> its local catalog file, read (0: the catalog of the projects not listed). See server.catalog.
    local_catalogs: Mapping[int, Catalog] = field(default_factory=dict)
    # How often a project's catalog is read again from the provider's admin catalog API.
    catalog_refresh_s: float = 600.0
    consumer: ConsumerSettings = field(default_factory=ConsumerSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    reconcile: ReconcileSettings = field(default_factory=ReconcileSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    feed: FeedSettings = field(default_factory=FeedSettings)
    # gRPC's backlog of calls received but not yet picked up by the server's loop (`grpc.server.max_pending_requests`
    # and `..._hard_limit`). Past the first, new calls are refused at random, more often as the backlog nears the
    # second; all are refused beyond it. gRPC's defaults (1000/3000) refuse part of a reconnect storm of streams.
    grpc_max_pending_requests: int = 20_000
    grpc_max_pending_requests_hard_limit: int = 40_000
    # What a write waits for before it counts (`server.durability`): an event's XACK, a Grant's or Revoke's answer.
    write_durability: str = "auto"
    write_durability_replicas: int = 1
    # None: 1,000 ms, or half the Redis timeout when that is shorter (`write_wait_ms`).
    write_durability_timeout_ms: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, provider: str = "") -> Settings:
        """Reads the settings from environment variables.

        Args:
            provider: the payment provider's name, which names its tables in the projects file.

        Raises:
            ConfigError: a variable is malformed or the combination is unsafe (no API keys outside
                development mode, half a TLS configuration).
        """
        env = os.environ if env is None else env
        reader = EnvReader(env, ConfigError)
        keys_text = reader.text("ENTITLEMENTS_API_KEYS", "")
        keys_file = reader.text("ENTITLEMENTS_API_KEYS_FILE", "")
        if keys_file:
            try:
                keys_text = "\n".join([keys_text, Path(keys_file).read_text()])
            except OSError as exc:
                raise ConfigError(f"ENTITLEMENTS_API_KEYS_FILE: cannot read {keys_file}: {exc}") from exc
        try:
            api_keys = parse_api_keys(keys_text)
        except ValueError as exc:
            raise ConfigError(f"ENTITLEMENTS_API_KEYS: {exc}") from exc
        insecure = reader.boolean("ENTITLEMENTS_INSECURE_DEV_MODE", False)
        cert = reader.text("ENTITLEMENTS_TLS_CERT_FILE", "")
        key = reader.text("ENTITLEMENTS_TLS_KEY_FILE", "")
        client_ca = reader.text("ENTITLEMENTS_TLS_CLIENT_CA_FILE", "")
        tls: TLSSettings | None = None
        if cert or key:
            if not (cert and key):
                raise ConfigError("ENTITLEMENTS_TLS_CERT_FILE and ENTITLEMENTS_TLS_KEY_FILE must be set together")
            tls = TLSSettings(Path(cert), Path(key), Path(client_ca) if client_ca else None)
        elif client_ca:
            raise ConfigError("ENTITLEMENTS_TLS_CLIENT_CA_FILE needs ENTITLEMENTS_TLS_CERT_FILE and _KEY_FILE")
        appendfsync = reader.text("ENTITLEMENTS_REDIS_APPENDFSYNC", "always")
        if appendfsync not in ("always", "everysec", "no"):
            raise ConfigError("ENTITLEMENTS_REDIS_APPENDFSYNC must be always, everysec or no")
        log_json_text = reader.text("ENTITLEMENTS_LOG_JSON", "")
        projects = _projects(reader, provider, env)
        consumer = ConsumerSettings(
            enabled=reader.boolean("ENTITLEMENTS_CONSUMER_ENABLED", True),
            batch=reader.integer("ENTITLEMENTS_CONSUMER_BATCH", 64, minimum=1, maximum=10_000),
            block_ms=reader.integer("ENTITLEMENTS_CONSUMER_BLOCK_MS", 1000, minimum=1, maximum=60_000),
            claim_idle_s=reader.number("ENTITLEMENTS_CONSUMER_CLAIM_IDLE_S", 30.0, minimum=0.01),
            max_deliveries=reader.integer("ENTITLEMENTS_CONSUMER_MAX_DELIVERIES", 5, minimum=1, maximum=1000),
            retention_days=reader.number("ENTITLEMENTS_EVENT_RETENTION_DAYS", 7.0, minimum=0.0),
            projects_refresh_s=reader.number("ENTITLEMENTS_CONSUMER_PROJECTS_REFRESH_S", 5.0, minimum=0.01),
        )
        console = ConsoleSettings(
            enabled=reader.boolean("ENTITLEMENTS_CONSOLE_ENABLED", True),
            host=reader.text("ENTITLEMENTS_CONSOLE_HOST", "127.0.0.1"),
            port=reader.integer("ENTITLEMENTS_CONSOLE_PORT", 9470, minimum=0, maximum=65535),
            session_idle_s=reader.number("ENTITLEMENTS_CONSOLE_SESSION_IDLE_S", 1800.0, minimum=1.0),
            secure_cookie=reader.boolean("ENTITLEMENTS_CONSOLE_SECURE_COOKIE", False),
            login_failures_per_minute=reader.integer(
                "ENTITLEMENTS_CONSOLE_LOGIN_FAILURES_PER_MINUTE", 10, minimum=1, maximum=10_000
            ),
        )
        http = HttpSettings(
            enabled=reader.boolean("ENTITLEMENTS_HTTP_ENABLED", True),
            host=reader.text("ENTITLEMENTS_HTTP_HOST", "127.0.0.1"),
            port=reader.integer("ENTITLEMENTS_HTTP_PORT", 8081, minimum=0, maximum=65535),
            max_body_bytes=reader.integer("ENTITLEMENTS_HTTP_MAX_BODY_BYTES", 256 * 1024, minimum=1024),
            sse_heartbeat_s=reader.number("ENTITLEMENTS_HTTP_SSE_HEARTBEAT_S", 15.0, minimum=0.1, maximum=3600.0),
            keepalive_timeout_s=reader.number("ENTITLEMENTS_HTTP_KEEPALIVE_TIMEOUT_S", 75.0, minimum=1.0),
        )
        pending = reader.integer("ENTITLEMENTS_GRPC_MAX_PENDING_REQUESTS", 20_000, minimum=1)
        pending_hard = reader.integer("ENTITLEMENTS_GRPC_MAX_PENDING_REQUESTS_HARD_LIMIT", 2 * pending, minimum=1)
        if pending_hard < pending:
            raise ConfigError(
                "ENTITLEMENTS_GRPC_MAX_PENDING_REQUESTS_HARD_LIMIT must be at least "
                "ENTITLEMENTS_GRPC_MAX_PENDING_REQUESTS"
            )
        return cls(
            grpc_host=reader.text("ENTITLEMENTS_GRPC_HOST", "127.0.0.1"),
            grpc_port=reader.integer("ENTITLEMENTS_GRPC_PORT", 50051, minimum=0, maximum=65535),
            processes=reader.count_or_auto("ENTITLEMENTS_PROCESSES", 1, maximum=MAX_PROCESSES),
            metrics_host=reader.text("ENTITLEMENTS_METRICS_HOST", "127.0.0.1"),
            metrics_port=reader.integer("ENTITLEMENTS_METRICS_PORT", 9464, minimum=0, maximum=65535),
            worker_metrics_port=reader.optional_integer("ENTITLEMENTS_WORKER_METRICS_PORT", minimum=0, maximum=65535),
            redis_url=reader.text("REDIS_URL", "") or None,
            redis_cluster=reader.boolean("REDIS_CLUSTER", False),
            redis_timeout_s=reader.number("ENTITLEMENTS_REDIS_TIMEOUT_S", 2.0, minimum=0.05),
            redis_max_connections=reader.integer("ENTITLEMENTS_REDIS_MAX_CONNECTIONS", 64, minimum=1),
            data_dir=Path(reader.text("ENTITLEMENTS_DATA_DIR", "var")),
            appendfsync=appendfsync,
            idempotency_ttl_days=reader.number("ENTITLEMENTS_IDEMPOTENCY_TTL_DAYS", 7.0, minimum=1.0),
            api_keys=api_keys,
            insecure_dev_mode=insecure,
            tls=tls,
            shutdown_grace_s=reader.number("ENTITLEMENTS_SHUTDOWN_GRACE_S", 10.0, minimum=0.0),
            health_check_interval_s=reader.number("ENTITLEMENTS_HEALTH_CHECK_INTERVAL_S", 5.0, minimum=0.1),
            log_level=reader.text("ENTITLEMENTS_LOG_LEVEL", "info").lower(),
            log_json=None if not log_json_text else reader.boolean("ENTITLEMENTS_LOG_JSON", True),
            event_partitions=reader.integer("ENTITLEMENTS_EVENT_PARTITIONS", 1, minimum=1, maximum=1024),
            projects=projects,
            local_catalogs=_local_catalogs(projects),
            catalog_refresh_s=reader.number("ENTITLEMENTS_CATALOG_REFRESH_S", 600.0, minimum=1.0),
            consumer=consumer,
            tracking=TrackingSettings.from_env(reader),
            watch=WatchSettings.from_env(reader),
            reconcile=ReconcileSettings.from_env(reader),
            console=console,
            http=http,
            feed=FeedSettings.from_env(reader),
            grpc_max_pending_requests=pending,
            grpc_max_pending_requests_hard_limit=pending_hard,
            write_durability=reader.text("ENTITLEMENTS_WRITE_DURABILITY", "auto").lower(),
            write_durability_replicas=reader.integer("ENTITLEMENTS_WRITE_DURABILITY_REPLICAS", 1, minimum=1),
            write_durability_timeout_ms=reader.optional_integer("ENTITLEMENTS_WRITE_DURABILITY_TIMEOUT_MS", minimum=1),
        )

    def check_servable(self) -> None:
        """Refuses to serve without API keys unless insecure development mode is on, or with a key bound to a
        project the service does not serve (a typo that would refuse every call of that key).

        Raises:
            ConfigError: no API keys and not in development mode, a key bound to a project not served, or a write
                durability that is unknown or does not fit in the Redis timeout.
        """
        self._check_durability()
        self.feed.check(self.write_bound_s)
        if not self.api_keys and not self.insecure_dev_mode:
            raise ConfigError(
                "no API keys configured: set ENTITLEMENTS_API_KEYS (see `python -m server hash-key`), "
                "or ENTITLEMENTS_INSECURE_DEV_MODE=1 for local development only"
            )
        for key in self.api_keys:
            unknown = sorted(p for p in key.projects or () if not self.projects.serves(p))
            if unknown:
                raise ConfigError(
                    f"ENTITLEMENTS_API_KEYS: key '{key.name}' is bound to project(s) {', '.join(map(str, unknown))}, "
                    f"which the service does not serve ({self.projects.source})"
                )

    @property
    def write_wait_ms(self) -> int:
        """How long one write's durability wait may last: the setting, or by default 1,000 ms, or half the Redis
        timeout when that is shorter (the wait must end before the connection's read timeout)."""
        if self.write_durability_timeout_ms is not None:
            return self.write_durability_timeout_ms
        return max(1, min(1000, int(self.redis_timeout_s * 500)))

    @property
    def write_bound_s(self) -> float:
        """The longest a write may take before its caller gives up: the Redis timeout plus the durability wait."""
        return self.redis_timeout_s + self.write_wait_ms / 1000

    def _check_durability(self) -> None:
        if self.write_durability not in SETTING_MODES:
            raise ConfigError(f"ENTITLEMENTS_WRITE_DURABILITY must be one of {', '.join(SETTING_MODES)}")
        if self.write_durability_replicas < 1:
            raise ConfigError("ENTITLEMENTS_WRITE_DURABILITY_REPLICAS must be at least 1")
        if self.write_wait_ms < 1:
            raise ConfigError(
                "ENTITLEMENTS_WRITE_DURABILITY_TIMEOUT_MS must be at least 1 (Redis reads 0 as: wait forever)"
            )
        if self.write_wait_ms / 1000 >= self.redis_timeout_s:
            # The server holds the connection for the whole wait; a socket timeout shorter than it would cut the
            # wait off instead of reporting that the write was not durable.
            raise ConfigError(
                f"ENTITLEMENTS_WRITE_DURABILITY_TIMEOUT_MS ({self.write_wait_ms}) must be below "
                f"ENTITLEMENTS_REDIS_TIMEOUT_S ({self.redis_timeout_s:g} s), the connection's read timeout during "
                "the wait"
            )


def _projects(reader: EnvReader, provider: str, env: Mapping[str, str]) -> Projects:
    """The projects file, or the single-project variables' template (the composition root adds the provider's)."""
    path = reader.text("ENTITLEMENTS_PROJECTS_FILE", "")
    catalog_file = reader.text("ENTITLEMENTS_CATALOG_FILE", "")
    if path:
        if catalog_file:
            raise ConfigError(
                "ENTITLEMENTS_CATALOG_FILE cannot be used with ENTITLEMENTS_PROJECTS_FILE: put it in the projects "
                "file (catalog_file of each project)"
            )
        if reader.text("ENTITLEMENTS_SANDBOX_POLICY", ""):
            raise ConfigError(
                "ENTITLEMENTS_SANDBOX_POLICY cannot be used with ENTITLEMENTS_PROJECTS_FILE: put it in the projects "
                "file (sandbox of each project)"
            )
        return Projects.load(Path(path), provider or "provider", env=env)
    sandbox = reader.text("ENTITLEMENTS_SANDBOX_POLICY", "ignore")
    if sandbox not in SANDBOX_POLICIES:
        raise ConfigError(f"ENTITLEMENTS_SANDBOX_POLICY must be {' or '.join(SANDBOX_POLICIES)}, not {sandbox!r}")
    template = Project(
        0,
        sandbox=sandbox,
        catalog_source=CATALOG_FILE if catalog_file else CATALOG_NONE,
        catalog_file=Path(catalog_file) if catalog_file else None,
    )
    return Projects.single(None, template)


def _local_catalogs(projects: Projects) -> dict[int, Catalog]:
    """Reads every project's local catalog file (each file once), so a bad one stops the start with its message.

    Raises:
        ConfigError: a file cannot be read or has an invalid entry.
    """
    read: dict[Path, Catalog] = {}
    catalogs: dict[int, Catalog] = {}
    for project in [projects.template, *projects.projects.values()]:
        if project.catalog_file is not None:
            if project.catalog_file not in read:
                read[project.catalog_file] = Catalog.load(project.catalog_file)
            catalogs[project.id] = read[project.catalog_file]
    return catalogs
