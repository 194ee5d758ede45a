"""The support console: a web page served by the service process on its own port (docs/CONSOLE.md).

Support agents and on-call engineers log in with an API key that has the `console` scope, pick a project, find a
player (by id or order id) and see their entitlements, orders with each status and its source, subscriptions and
ledger in plain words; with the `write` scope too, they grant or revoke (with a reason, on the ledger as
`console:<key name>`) and replay or discard dead letters. Server-rendered HTML, no script.

Modules: `web` (the application, its middleware, `Console`), `views` (the pages), `actions` (the writes),
`player` (what the player page reads), `parts` (what handlers stand on), `sessions` (sessions, login limits),
`render` (templates, escaping, headers).
"""

from __future__ import annotations

import ssl

from core.connections import RedisClient
from server.auth import Authenticator
from server.catalog import Catalogs
from server.config import Settings
from server.console.parts import ConsoleParts
from server.console.web import Console, application
from server.reconcile import OrderIndex
from server.store import EntitlementStore

__all__ = ["Console", "ConsoleParts", "application", "start_console"]


async def start_console(
    settings: Settings, store: EntitlementStore, redis: RedisClient, catalogs: Catalogs, order_index: OrderIndex
) -> Console | None:
    """Starts the console on its port unless it is turned off (`ENTITLEMENTS_CONSOLE_ENABLED`); with the service's
    TLS certificate when the gRPC port has one (then its cookie is Secure)."""
    if not settings.console.enabled:
        return None
    tls = None
    if settings.tls is not None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(settings.tls.cert_file, settings.tls.key_file)
    parts = ConsoleParts(
        settings,
        store,
        redis,
        catalogs,
        order_index,
        Authenticator(settings.api_keys, insecure_dev_mode=settings.insecure_dev_mode),
        secure_cookie=tls is not None or settings.console.secure_cookie,
    )
    console = Console(parts, tls)
    await console.start()
    return console
