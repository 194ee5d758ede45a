"""The console's web application and its lifecycle on its own port.

Every request passes one middleware: the security headers; the session from its cookie (a page without one
redirects to the login form, an action without one is refused); the CSRF token of every POST of a session; and
errors as pages: a refused input is its message with the RPCs' status (400, 403, 409), Redis unavailable is 503
(retry), and anything unexpected is logged and shown as a plain 500, never a traceback.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from importlib import resources

import structlog
from aiohttp import web

from core.errors import StoreUnavailable
from server.console import actions, views
from server.console.parts import PARTS, SESSION, SESSION_COOKIE, ConsoleParts
from server.console.render import SECURITY_HEADERS, page, see_other
from server.errors import FailedPrecondition, IdempotencyConflict, InvalidArgument, PermissionDenied

log = structlog.get_logger("server.console")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Requests that need no session.
PUBLIC = frozenset({"/login", "/console.css", "/favicon.ico"})
#: The largest form accepted (a grant's fields are well under it).
MAX_BODY_BYTES = 64 * 1024
_ERRORS: tuple[tuple[type[Exception], int], ...] = (
    (InvalidArgument, 400),
    (PermissionDenied, 403),
    (IdempotencyConflict, 409),
    (FailedPrecondition, 409),
)
_STYLE = resources.files("server.console").joinpath("templates/console.css").read_text()


def _error_page(status: int, message: str) -> web.Response:
    return page("error.html", status, code=status, message=message)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Security headers, session, CSRF and errors for every request."""
    try:
        response = await _guarded(request, handler)
    except web.HTTPException as exc:
        # aiohttp's own: no such route (404), method (405), a body too large (413).
        if exc.status >= 400:
            response = _error_page(exc.status, exc.reason)
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
        else:
            response = see_other(exc.headers.get("Location", "/"))
    except StoreUnavailable as exc:
        log.warning("console_store_unavailable", path=request.path, error=str(exc))
        response = _error_page(503, f"The store is unavailable ({exc}); nothing was changed. Try again.")
    except Exception as exc:
        for error, status in _ERRORS:
            if isinstance(exc, error):
                response = _error_page(status, str(exc))
                break
        else:
            log.error("console_internal_error", path=request.path, exc_info=exc)
            response = _error_page(500, "Internal error; the service logged the details.")
    response.headers.update(SECURITY_HEADERS)
    return response


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    parts = request.app[PARTS]
    session = parts.sessions.get(request.cookies.get(SESSION_COOKIE))
    request[SESSION] = session
    if request.path in PUBLIC:
        return await handler(request)
    if session is None:
        if request.method == "GET":
            return see_other("/login")
        return _error_page(403, "Not logged in (or the session expired): log in again.")
    if request.method == "POST":
        form = await request.post()
        sent = form.get("csrf")
        if not session.csrf_matches(sent if isinstance(sent, str) else None):
            log.warning("console_csrf_refused", operator=session.principal.name, path=request.path)
            return _error_page(403, "The form's security token is missing or stale: reload the page and try again.")
    return await handler(request)


async def style(request: web.Request) -> web.Response:
    return web.Response(text=_STYLE, content_type="text/css", headers={"Cache-Control": "max-age=300"})


async def no_icon(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Cache-Control": "max-age=86400"})


def application(parts: ConsoleParts) -> web.Application:
    """The console's aiohttp application over the service's parts."""
    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY_BYTES)
    app[PARTS] = parts
    app.router.add_get("/console.css", style)
    app.router.add_get("/favicon.ico", no_icon)
    app.router.add_get("/login", views.login_page)
    app.router.add_post("/login", views.login)
    app.router.add_post("/logout", views.logout)
    app.router.add_get("/", views.home)
    app.router.add_get("/projects", views.choose_project)
    app.router.add_get("/p/{project}/", views.project_home)
    app.router.add_get("/p/{project}/find", views.find)
    app.router.add_get("/p/{project}/player", views.player)
    app.router.add_post("/p/{project}/player/grant", actions.grant)
    app.router.add_post("/p/{project}/player/revoke", actions.revoke)
    app.router.add_get("/p/{project}/dead-letters", views.dead_letters)
    app.router.add_post("/p/{project}/dead-letters/{entry_id}/{action:replay|discard}", actions.dead_letter_action)
    app.router.add_get("/p/{project}/reconciliation", views.reconciliation)
    return app


class Console:
    """The console served on its own port.

    Args:
        parts: what it reads and writes through.
        tls: the server's TLS context, or None for plain HTTP.
    """

    def __init__(self, parts: ConsoleParts, tls: ssl.SSLContext | None = None) -> None:
        self.parts = parts
        self._tls = tls
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> int:
        """Listens on the console's host and port; returns the port (the one chosen when it is 0)."""
        settings = self.parts.settings.console
        self._runner = web.AppRunner(application(self.parts), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, settings.host, settings.port, ssl_context=self._tls)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("console_started", address=f"{settings.host}:{self.port}", tls=self._tls is not None)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
