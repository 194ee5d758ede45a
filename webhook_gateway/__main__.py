"""Command line of the webhook gateway: `python -m webhook_gateway`, configured by environment variables.

The composition root of the gateway process: it reads the gateway's settings and Xsolla's (the webhook provider:
its secrets, from the projects file `ENTITLEMENTS_PROJECTS_FILE` that the service reads too, or from the
single-project variables) and runs until SIGTERM or SIGINT, then stops gracefully (in-flight webhooks finish
within GATEWAY_SHUTDOWN_GRACE_S). Exit code 2 on a configuration error. Every variable is listed in the README.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import structlog

from core import logs
from core.errors import ConfigError
from core.lifecycle import stop_signals
from providers.xsolla import NAMED_NETWORKS, load_projects
from providers.xsolla import WebhookSettings as XsollaWebhookSettings
from webhook_gateway.app import Gateway
from webhook_gateway.config import GatewaySettings

log = structlog.get_logger("webhook_gateway")


async def serve(settings: GatewaySettings, xsolla: XsollaWebhookSettings) -> None:
    """Runs the gateway, with Xsolla as its webhook provider, until SIGTERM or SIGINT."""
    if settings.user_directory == "allow_all":
        log.warning(
            "USER_DIRECTORY_ALLOW_ALL",
            message="GATEWAY_USER_DIRECTORY is allow_all: every user_validation is answered 'exists'. "
            "Set it to http (GATEWAY_USER_DIRECTORY_URL) outside development.",
        )
    async with stop_signals() as stop:
        gateway = Gateway(settings, xsolla)
        await gateway.start()
        await stop.wait()
        log.info("shutdown_requested", grace_s=settings.shutdown_grace_s)
        await gateway.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m webhook_gateway",
        description="Xsolla webhook gateway: verifies webhooks and stores them in a Redis stream. "
        "Configured by environment variables (docs/WEBHOOKS.md).",
    )
    parser.parse_args(argv)
    try:
        settings = GatewaySettings.from_env(named_networks=NAMED_NETWORKS)
        projects = load_projects(settings.projects_file) if settings.projects_file is not None else None
        xsolla = XsollaWebhookSettings.from_env(projects=projects)
        if settings.redis_url is None:
            raise ConfigError(
                "REDIS_URL is not set: point it at the service's Redis "
                "(with the service's embedded one: REDIS_URL=unix://$PWD/var/valkey.sock)"
            )
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_json)
    try:
        asyncio.run(serve(settings, xsolla))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
