"""The console's HTML: Jinja2 templates (`server/console/templates/`) with autoescaping on, so every value a page
shows (player ids, skus, reasons, errors: caller data) is escaped; the filters the templates use; the security
headers of every response.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

import jinja2
from aiohttp import web

from server.store import KIND_NAMES

#: Every response: nothing but this origin's own resources (no script at all is served), never in a frame, no
#: referrer (player ids are in the URLs), no content sniffing.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
#: Pages hold players' data: never stored by a browser or a proxy.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def when(ms: int | None) -> str:
    """Milliseconds since the epoch as "2026-05-01 14:00:03 UTC"; "-" for none."""
    if not ms:
        return "-"
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms"


def kind_name(kind: int) -> str:
    """An entitlement kind's name ("consumable", ...)."""
    return KIND_NAMES.get(kind, f"kind {kind}")


def form_key() -> str:
    """A fresh idempotency key for a form: the submit of one rendered form is applied once, however often it is
    sent."""
    return "console-" + secrets.token_urlsafe(18)


_environment = jinja2.Environment(
    loader=jinja2.PackageLoader("server.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_environment.filters["when"] = when
_environment.filters["kind_name"] = kind_name
_environment.globals["form_key"] = form_key


def page(template: str, status: int = 200, **context: Any) -> web.Response:
    """A rendered page, with the no-store headers (the security headers are added to every response)."""
    body = _environment.get_template(template).render(**context)
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8", headers=NO_STORE)


def see_other(location: str) -> web.Response:
    """A 303 to `location` (after a form: the browser GETs the page it names)."""
    return web.Response(status=303, headers={"Location": location, **NO_STORE})
