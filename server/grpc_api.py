"""The gRPC server of the service: EntitlementService, health and reflection on the public port, and the private
socket the HTTP/JSON API calls it through; and the health service's status, which follows Redis (`watch_store`).

The public port speaks TLS (and requires client certificates when a client CA is set) as the settings say. The
HTTP/JSON API (`server.http_api`) does not reimplement any RPC: it calls this same server, so that a request over
HTTP goes through exactly the authentication, validation, limits, metrics and status mapping of one over gRPC. It
reaches it through a second listening address, a unix socket without TLS in a directory only this process's user
may enter (mode 0700, made by `tempfile.mkdtemp`), so the TCP port can keep requiring client certificates while
the in-process caller needs none.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer as AsyncHealthServicer
from grpc_reflection.v1alpha import reflection

from server.config import Settings
from server.errors import ConfigError, PortInUse, StoreUnavailable
from server.metrics import ServiceMetrics
from server.rpc import HasRuntime, add_service, grpc_server_options
from server.store import EntitlementStore

log = structlog.get_logger("server.grpc_api")

#: The longest unix socket path the kernel takes (`sun_path` is 108 bytes on Linux, 104 on macOS), with its NUL.
_MAX_SOCKET_PATH = 103


class PrivateSocket:
    """A unix socket path in a new directory of mode 0700; `close()` removes the directory.

    Raises:
        ConfigError: the temporary directory's path (TMPDIR) is too long for a unix socket.
    """

    def __init__(self) -> None:
        self._directory = Path(tempfile.mkdtemp(prefix="entitlements-"))  # mode 0700
        self.path = self._directory / "grpc.sock"
        if len(str(self.path).encode()) > _MAX_SOCKET_PATH:
            self.close()
            raise ConfigError(f"the private gRPC socket's path {self.path} is too long: set TMPDIR to a shorter one")

    @property
    def target(self) -> str:
        """The gRPC target of the socket (`unix:<absolute path>`)."""
        return f"unix:{self.path}"

    def close(self) -> None:
        shutil.rmtree(self._directory, ignore_errors=True)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The public port's TLS credentials (client certificates required when a client CA is set); None without TLS."""
    if settings.tls is None:
        return None
    client_ca = settings.tls.client_ca_file
    return grpc.ssl_server_credentials(
        [(settings.tls.key_file.read_bytes(), settings.tls.cert_file.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )


async def start_grpc_server(
    settings: Settings,
    servicer: HasRuntime,
    health_servicer: AsyncHealthServicer,
    *,
    private: PrivateSocket | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Builds and starts the gRPC server; returns it and its public port (the one chosen when the setting is 0).

    Args:
        settings: the listen address, TLS and server options.
        servicer: the EntitlementService servicer, registered by `server.rpc.add_service`.
        health_servicer: the gRPC health service.
        private: also listen on this unix socket, without TLS (the HTTP/JSON API's way in).
    """
    server = grpc.aio.server(options=grpc_server_options(settings))
    # Not the generated add_EntitlementServiceServicer_to_server: the requests are decoded after authentication.
    add_service(server, servicer)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_name = servicer.runtime.service.full_name
    reflection.enable_server_reflection((service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    credentials = server_credentials(settings)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:  # grpc's "Failed to bind to address"; the cause is only in gRPC core's debug log
        raise PortInUse(
            f"ENTITLEMENTS_GRPC_PORT: cannot listen on {address}: in use by another process (or not an address "
            "of this host)"
        ) from None
    if private is not None:
        server.add_insecure_port(private.target)
    await server.start()
    return server, port


async def set_serving(health_servicer: AsyncHealthServicer, services: Iterable[str], *, serving: bool) -> None:
    """Sets the health status of the server as a whole ("") and of each of `services`."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *services):
        await health_servicer.set(name, status)


async def watch_store(
    store: EntitlementStore,
    health_servicer: AsyncHealthServicer,
    services: Iterable[str],
    metrics: ServiceMetrics,
    *,
    interval_s: float,
    changed: asyncio.Event,
    embedded_up: Callable[[], bool],
) -> None:
    """Reports NOT_SERVING on the health service while Redis does not answer (or the embedded one is being
    restarted: `embedded_up` says False), SERVING once it does; checked every `interval_s`, and at once when
    `changed` is set (the embedded store's supervisor sets it). Runs until cancelled."""
    services = tuple(services)
    serving = True
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval_s):
                await changed.wait()
        changed.clear()
        healthy = embedded_up()
        try:
            if healthy:
                await store.ping()
        except StoreUnavailable:
            healthy = False
        metrics.store_up.set(1 if healthy else 0)
        if healthy != serving:
            serving = healthy
            await set_serving(health_servicer, services, serving=healthy)
            log.warning("store_health_changed", serving=healthy)
