"""The console's pages: log in and out, a project's start page, finding a player (by id or order id), the player,
the dead letters and the reconciliation status. Reads only; the actions are in `server.console.actions`.
"""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import quote, urlencode

import structlog
from aiohttp import web

from core.clock import now_ms
from core.connections import bounded
from server.console.parts import (
    LOGIN_COOKIE,
    SESSION,
    SESSION_COOKIE,
    may_log_in,
    parts_of,
    project_choices,
    project_of,
    session_of,
    show,
)
from server.console.player import player_view
from server.console.render import page, see_other
from server.deadletters import DeadLetters
from server.errors import InvalidArgument
from server.reconcile import SweeperLease, SweepRecords
from server.validation import identifier

log = structlog.get_logger("server.console")

_LOGIN_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")


def player_url(project_id: int, user_id: str, **query: str) -> str:
    """The player page's address."""
    return f"/p/{project_id}/player?" + urlencode({"id": user_id, **query})


async def login_form(request: web.Request, *, status: int = 200, error: str = "") -> web.Response:
    """The login form, with a token in a cookie that the form must send back (login CSRF). The browser's token is
    kept when it has one: a login page open in another tab (or a favicon's redirect) must not make it stale."""
    token = request.cookies.get(LOGIN_COOKIE, "")
    if not _LOGIN_TOKEN.fullmatch(token):
        token = secrets.token_urlsafe(24)
    response = page("login.html", status, error=error, login_token=token)
    parts = parts_of(request)
    response.set_cookie(
        LOGIN_COOKIE, token, httponly=True, samesite="Strict", secure=parts.secure_cookie, path="/login"
    )
    return response


async def login_page(request: web.Request) -> web.Response:
    if request[SESSION] is not None:
        return see_other("/")
    return await login_form(request)


async def login(request: web.Request) -> web.Response:
    """Checks the key typed in: valid, with the `console` scope; failures are limited per client address."""
    parts = parts_of(request)
    address = request.remote or "?"
    wait_s = parts.logins.retry_after_s(address)
    if wait_s > 0:
        response = await login_form(request, status=429, error="Too many failed logins: try again in a minute.")
        response.headers["Retry-After"] = str(int(wait_s) + 1)
        return response
    form = await request.post()
    sent, expected = form.get("login_token"), request.cookies.get(LOGIN_COOKIE)
    if not isinstance(sent, str) or not expected or not secrets.compare_digest(sent, expected):
        return await login_form(request, status=403, error="The form expired: log in again.")
    key = form.get("api_key")
    principal = parts.authenticate(key) if isinstance(key, str) else None
    if principal is None or not may_log_in(principal):
        parts.logins.failed(address)
        log.warning("console_login_refused", address=address, known_key=principal is not None)
        if principal is None:
            return await login_form(request, status=401, error="Unknown API key.")
        return await login_form(request, status=403, error="This API key has no console scope.")
    parts.logins.succeeded(address)
    session = parts.sessions.open(principal)
    log.info("console_login", operator=principal.name, address=address)
    response = see_other("/")
    response.set_cookie(
        SESSION_COOKIE, session.token, httponly=True, samesite="Strict", secure=parts.secure_cookie, path="/"
    )
    response.del_cookie(LOGIN_COOKIE, path="/login")
    return response


async def logout(request: web.Request) -> web.Response:
    parts_of(request).sessions.close(session_of(request).token)
    response = see_other("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def home(request: web.Request) -> web.Response:
    """The first project the operator may use, or the choice of one."""
    session = session_of(request)
    choices = project_choices(session.principal, parts_of(request).settings.projects)
    if len(choices) == 1:
        return see_other(f"/p/{choices[0]}/")
    return show(request, "projects.html")


async def choose_project(request: web.Request) -> web.Response:
    """The project selector's target: to that project's start page."""
    text = request.query.get("project", "").strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise InvalidArgument("project", "must be a project id (digits)")
    return see_other(f"/p/{int(text)}/")


async def project_home(request: web.Request) -> web.Response:
    """A project's start page: find a player, the dead letters waiting, the reconciliation's last success."""
    project_id = project_of(request)
    parts = parts_of(request)
    timeout_s = parts.settings.redis_timeout_s
    letters = DeadLetters(parts.redis, parts.settings.event_partitions)
    waiting = 0
    for keys in letters.keys_of(project_id):
        waiting += await bounded(letters.waiting(keys), timeout_s)
    progress = await SweepRecords(parts.redis, timeout_s=timeout_s).progress(project_id)
    return show(request, "project.html", project=project_id, dead_letters=waiting, progress=progress)


async def find(request: web.Request) -> web.Response:
    """Finds a player by id, or by an order id through the order index."""
    project_id = project_of(request)
    query = request.query.get("q", "").strip()
    by = request.query.get("by", "player")
    if by == "order":
        order_id = identifier("order id", query)
        owner = (await parts_of(request).order_index.owners(project_id, [order_id]))[order_id]
        if owner.known:
            return see_other(player_url(project_id, owner.user_id) + "#order-" + quote(order_id, safe=""))
        if owner.conflict:
            why = "records disagree about whose this order is (reconciliation reports it as unresolved)"
        else:
            why = "no order with this id is known in this project (the index keeps orders for its retention)"
        return show(request, "project.html", 404, project=project_id, error=f"Order {order_id}: {why}.")
    user_id = identifier("player id", query)
    return see_other(player_url(project_id, user_id))


async def player(request: web.Request) -> web.Response:
    project_id = project_of(request)
    user_id = identifier("player id", request.query.get("id", ""))
    return await player_page(request, project_id, user_id, ledger_token=request.query.get("ledger", ""))


async def player_page(
    request: web.Request,
    project_id: int,
    user_id: str,
    *,
    ledger_token: str = "",
    status: int = 200,
    error: str = "",
    form: dict[str, Any] | None = None,
) -> web.Response:
    """The player page; after a refused action, with its error and the form as it was sent (same idempotency key:
    sending it again after a timeout replays rather than applies twice)."""
    parts = parts_of(request)
    view = await player_view(
        parts.store, parts.redis, project_id, user_id, ledger_token, parts.settings.redis_timeout_s
    )
    return show(
        request,
        "player.html",
        status,
        project=project_id,
        player=view,
        error=error,
        form=form or {},
        ledger_token=ledger_token,
        now_ms=now_ms(),
        next_url=player_url(project_id, user_id, ledger=view.ledger_next) if view.ledger_next else "",
        first_url=player_url(project_id, user_id),
    )


async def dead_letters(request: web.Request) -> web.Response:
    project_id = project_of(request)
    parts = parts_of(request)
    letters = DeadLetters(parts.redis, parts.settings.event_partitions)
    found = await bounded(letters.read(project_id, count=100), parts.settings.redis_timeout_s)
    return show(request, "dead_letters.html", project=project_id, letters=found)


async def reconciliation(request: web.Request) -> web.Response:
    project_id = project_of(request)
    parts = parts_of(request)
    settings = parts.settings
    records = SweepRecords(parts.redis, timeout_s=settings.redis_timeout_s)
    progress = await records.progress(project_id)
    reports = await records.reports(project_id)
    holder = await SweeperLease(
        parts.redis, project_id, lease_s=settings.reconcile.lease_s, timeout_s=settings.redis_timeout_s
    ).current()
    return show(request, "reconciliation.html", project=project_id, progress=progress, reports=reports, holder=holder)
