"""The service as a process of its own (`python -m server`), for tests of several replicas and of crashes."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from entitlements import AsyncEntitlementsClient, UnavailableError
from server.auth import hash_key
from tests.helpers.services import READER_KEY
from tests.helpers.stores import StoreUnderTest

ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass
class ServiceProcess:
    """`python -m server` in a process of its own; `target` is its gRPC address."""

    process: asyncio.subprocess.Process
    target: str

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.process.returncode is None:
            self.process.terminate()
            try:
                async with asyncio.timeout(15):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    async def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def start_service_process(store: StoreUnderTest, log_file: Path, **env: str) -> ServiceProcess:
    """A service process on `store`, on a free gRPC port, with the reader key, consuming nothing (unless `env`
    says), its output in `log_file`; `env` adds or overrides ENTITLEMENTS_ variables."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    settings = {
        **os.environ,
        "REDIS_URL": store.url,
        "REDIS_CLUSTER": "true" if store.cluster else "false",
        "ENTITLEMENTS_GRPC_PORT": str(port),
        "ENTITLEMENTS_METRICS_PORT": "0",
        "ENTITLEMENTS_CONSOLE_ENABLED": "false",
        "ENTITLEMENTS_HTTP_ENABLED": "false",
        "ENTITLEMENTS_API_KEYS": f"reader:{hash_key(READER_KEY)}:read",
        "ENTITLEMENTS_CONSUMER_ENABLED": "false",
        "ENTITLEMENTS_LOG_LEVEL": "warning",
        **env,
    }
    with log_file.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", env=settings, stdout=log, stderr=log, cwd=ROOT
        )
    return ServiceProcess(process, f"127.0.0.1:{port}")


async def serving(client: AsyncEntitlementsClient, user_id: str) -> bool:
    """Whether the client's service answers a call (False while it is UNAVAILABLE, as when still starting)."""
    try:
        await client.check_entitlement(user_id, "gold", timeout_s=1.0)
    except UnavailableError:
        return False
    return True
