"""What every console handler stands on: the service's parts it reads and writes through, the request's session
and project, and how a page is shown (with the session's project selector, messages and write permission).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from core.connections import RedisClient
from core.projects import Projects
from server.auth import CONSOLE, WRITE, Authenticator, Principal
from server.catalog import Catalogs
from server.config import Settings
from server.console.render import page
from server.console.sessions import LoginGuard, Session, Sessions
from server.errors import InvalidArgument
from server.reconcile import OrderIndex
from server.store import EntitlementStore
from server.validation import resolve_project

SESSION_COOKIE = "console_session"
LOGIN_COOKIE = "console_login"


@dataclass
class ConsoleParts:
    """The service's parts the console uses (owned by the service), and the console's own state.

    Attributes:
        settings: the service's settings (projects, partitions, timeouts, the console's).
        store: the entitlement store: every write goes through it, as the RPCs' do.
        redis: the service's Redis client (order hashes, dead letters, sweep records).
        catalogs: the projects' catalogs (a grant's period, as Grant takes it).
        order_index: whose each order is (finding a player by order id).
        authenticator: the service's API keys.
        secure_cookie: whether the session cookie is marked Secure.
    """

    settings: Settings
    store: EntitlementStore
    redis: RedisClient
    catalogs: Catalogs
    order_index: OrderIndex
    authenticator: Authenticator
    secure_cookie: bool = False
    sessions: Sessions = field(init=False)
    logins: LoginGuard = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.settings.console.session_idle_s)
        self.logins = LoginGuard(self.settings.console.login_failures_per_minute)

    def authenticate(self, key: str) -> Principal | None:
        """The principal of a clear API key typed into the login form, or None when no configured key matches."""
        key = key.strip()
        if not key:
            return None
        return self.authenticator.authenticate(f"Bearer {key}")


PARTS: web.AppKey[ConsoleParts] = web.AppKey("console_parts", ConsoleParts)
#: The request's session, None when it has none (set by the middleware).
SESSION: web.RequestKey[Session | None] = web.RequestKey("console_session")


def parts_of(request: web.Request) -> ConsoleParts:
    return request.app[PARTS]


def session_of(request: web.Request) -> Session:
    """The request's session (the middleware let only requests with one reach the handler)."""
    session = request[SESSION]
    assert session is not None  # the middleware lets only requests with a session reach a handler that asks
    return session


def may_log_in(principal: Principal) -> bool:
    """Whether a key may log in to the console: it has the `console` scope."""
    return CONSOLE in principal.scopes


def may_write(principal: Principal) -> bool:
    """Whether a console user may grant, revoke, replay and discard: the `write` scope too."""
    return WRITE in principal.scopes


def project_choices(principal: Principal, projects: Projects) -> list[int]:
    """The projects the selector offers: those served that the key may use (the key's own when the service
    serves any project id)."""
    if projects.listed:
        return [p for p in projects.ids if principal.may_use(p)]
    if principal.projects is not None:
        return sorted(principal.projects)
    return [projects.default_project] if projects.default_project else []


def project_of(request: web.Request) -> int:
    """The request's project (its path's `{project}`), which the operator's key may use and the service serves.

    Raises:
        InvalidArgument: not a project id, or not served. PermissionDenied: the key is not bound to it.
    """
    text = request.match_info.get("project", "")
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise InvalidArgument("project", f"must be a project id (digits), not {text[:40]!r}")
    project_id = int(text)
    if project_id == 0:
        raise InvalidArgument("project", "must be a project id, not 0")
    return resolve_project(project_id, session_of(request).principal, parts_of(request).settings.projects)


def show(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    """A page of a logged-in operator: the template with the session's operator, project selector, messages and
    permissions."""
    session = session_of(request)
    parts = parts_of(request)
    principal = session.principal
    context.setdefault("project", None)
    return page(
        template,
        status,
        operator=principal.name,
        csrf=session.csrf,
        can_write=may_write(principal),
        choices=project_choices(principal, parts.settings.projects),
        any_project=not parts.settings.projects.listed and principal.projects is None,
        messages=session.take_flash(),
        **context,
    )
