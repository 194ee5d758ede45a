"""What the conformance scenarios run against: Redis, the service, the webhook gateway and the Xsolla simulator.

Everything is real and on loopback: the embedded Valkey, the service as a process of its own (`python -m server`,
so that a scenario can restart it on the same ports while a client follows an order), a second service process
that requires client certificates (mTLS) on the same store, the gateway and the simulator in the harness's event
loop, and a proxy that makes chosen calls fail (`conformance/proxy.py`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from dataclasses import replace
from pathlib import Path

from conformance.certs import Certificates
from conformance.proxy import FlakyProxy
from entitlements import AsyncEntitlementsClient, TLSConfig, UnavailableError
from providers import xsolla
from server.auth import hash_key
from server.embedded import EmbeddedRedis
from webhook_gateway.app import Gateway
from webhook_gateway.config import GatewaySettings
from xsolla_simulator import XsollaSimulator

ROOT = Path(__file__).resolve().parent.parent
PROJECT_A = 410_001
PROJECT_B = 410_002
SECRETS = {PROJECT_A: "conformance-secret-a", PROJECT_B: "conformance-secret-b"}
#: The API keys the scenarios connect with (`"key": "<name>"`); `unknown` is configured nowhere.
KEYS = {
    "writer": "conformance-writer-key-0001",
    "reader": "conformance-reader-key-0001",
    "beta_writer": "conformance-beta-writer-0001",
    "unknown": "conformance-unknown-key-0001",
}
API_KEYS = ";".join(
    [
        f"writer:{hash_key(KEYS['writer'])}:read,write",
        f"reader:{hash_key(KEYS['reader'])}:read",
        f"beta_writer:{hash_key(KEYS['beta_writer'])}:read,write:{PROJECT_B}",
    ]
)
PROJECTS_FILE = f"""
default_project = {PROJECT_A}

[projects.{PROJECT_A}]
name = "alpha"

  [projects.{PROJECT_A}.xsolla]
  webhook_secrets = ["{SECRETS[PROJECT_A]}"]

[projects.{PROJECT_B}]
name = "beta"

  [projects.{PROJECT_B}.xsolla]
  webhook_secrets = ["{SECRETS[PROJECT_B]}"]
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServiceProcess:
    """`python -m server` on fixed ports, so that it can be stopped and started again where clients expect it."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, *, tls: TLSConfig | None = None) -> None:
        self.name = name
        self.grpc_port = free_port()
        self.http_port = free_port()
        self._env = env | {
            "ENTITLEMENTS_GRPC_PORT": str(self.grpc_port),
            "ENTITLEMENTS_HTTP_PORT": str(self.http_port),
        }
        self._log = log_dir / f"{name}.log"
        self._tls = tls
        self._process: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_base_url(self) -> str:
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    async def start(self, timeout_s: float = 30.0) -> None:
        """Starts the process and waits until it answers a call."""
        with self._log.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "server", env=self._env, stdout=log, stderr=log, cwd=ROOT
            )
        self.starts += 1
        async with AsyncEntitlementsClient(self.target, api_key=KEYS["reader"], tls=self._tls) as client:
            async with asyncio.timeout(timeout_s):
                while True:
                    if self._process.returncode is not None:
                        raise RuntimeError(f"{self.name} exited {self._process.returncode}; see {self._log}")
                    try:
                        await client.check_entitlement("conformance-probe", "probe", timeout_s=1.0)
                        return
                    except UnavailableError:
                        await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """SIGTERM (the service ends its streams with UNAVAILABLE), then SIGKILL after 15 s."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            async with asyncio.timeout(15):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()

    async def restart(self) -> None:
        await self.stop()
        await self.start()


class ConformanceStack:
    """Starts and stops everything; `service`, `tls_service`, `proxy`, `sim` are there once `start()` returned."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis = EmbeddedRedis(workdir / "redis")
        self.certs = Certificates(workdir / "certs")
        self.sim: XsollaSimulator | None = None
        self.gateway: Gateway | None = None
        self.service: ServiceProcess | None = None
        self.tls_service: ServiceProcess | None = None
        self.proxy: FlakyProxy | None = None

    def _env(self) -> dict[str, str]:
        projects = self.workdir / "projects.toml"
        projects.write_text(PROJECTS_FILE, encoding="utf-8")
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("ENTITLEMENTS_", "REDIS_", "GATEWAY_"))}
        return inherited | {
            "REDIS_URL": self.redis.url,
            "ENTITLEMENTS_PROJECTS_FILE": str(projects),
            "ENTITLEMENTS_API_KEYS": API_KEYS,
            "ENTITLEMENTS_METRICS_PORT": "0",
            "ENTITLEMENTS_CONSOLE_ENABLED": "false",
            "ENTITLEMENTS_LOG_LEVEL": "warning",
            "ENTITLEMENTS_CONSUMER_BLOCK_MS": "100",
            "ENTITLEMENTS_ORDER_POLL_INTERVAL_S": "0.5",
            # An order the WebSocket says nothing about is asked of Get order after 1 s (which knows when an
            # order does not exist: NOT_FOUND), not after the default 5 minutes.
            "ENTITLEMENTS_ORDER_WS_SILENCE_S": "1",
            "ENTITLEMENTS_SHUTDOWN_GRACE_S": "1",
            "ENTITLEMENTS_TRACKING_LEASE_S": "3",
        }

    async def start(self) -> None:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        await self.redis.start()
        env = self._env()
        self.gateway = Gateway(
            replace(GatewaySettings.from_env(env), port=0, metrics_port=None), xsolla.WebhookSettings.from_env(env)
        )
        await self.gateway.start()
        self.sim = XsollaSimulator(
            project_id=PROJECT_A, webhook_url=f"{self.gateway.url}/{PROJECT_A}", webhook_secret=SECRETS[PROJECT_A]
        )
        self.sim.add_project(
            PROJECT_B, webhook_url=f"{self.gateway.url}/{PROJECT_B}", webhook_secret=SECRETS[PROJECT_B]
        )
        await self.sim.start()
        env |= {
            "ENTITLEMENTS_XSOLLA_STORE_API": self.sim.store_api_url,
            "ENTITLEMENTS_XSOLLA_ADMIN_API": self.sim.store_api_url,
            "ENTITLEMENTS_XSOLLA_WS_URL": self.sim.ws_url,
        }
        self.certs.write()
        logs = self.workdir / "logs"
        self.service = ServiceProcess("service", env, logs)
        tls_env = env | {
            "ENTITLEMENTS_TLS_CERT_FILE": str(self.certs.server_cert),
            "ENTITLEMENTS_TLS_KEY_FILE": str(self.certs.server_key),
            "ENTITLEMENTS_TLS_CLIENT_CA_FILE": str(self.certs.ca_cert),
            "ENTITLEMENTS_CONSUMER_ENABLED": "false",
        }
        self.tls_service = ServiceProcess("tls-service", tls_env, logs, tls=self.certs.client_tls())
        await asyncio.gather(self.service.start(), self.tls_service.start())
        self.proxy = FlakyProxy(self.service.target)
        await self.proxy.start()

    async def stop(self) -> None:
        for part in (self.proxy, self.service, self.tls_service, self.gateway, self.sim):
            if part is not None:
                await part.stop()
        await self.redis.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the service processes' logs, for a failing scenario's report."""
        tails = []
        for path in sorted((self.workdir / "logs").glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(tails)
