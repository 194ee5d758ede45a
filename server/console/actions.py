"""The console's actions: grant and revoke (with a mandatory reason), replay and discard a dead letter. Each needs
the `write` scope besides `console`; the middleware has checked the form's CSRF token.

Grant and revoke take the RPCs' path: the form becomes the RPC's request, validated by `server.validation` (a grant
without a duration takes the catalog's period, as Grant does), and `EntitlementStore.grant` / `revoke` apply it
with the actor `console:<key name>` and the reason, on the player's ledger. The idempotency key was generated when
the form was shown (a hidden field), so a form sent twice (a double click, a reload) is applied once: the second
send replays. A refused action shows the page again with the RPC's message and the form as it was sent.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import structlog
from aiohttp import web
from google.protobuf.duration_pb2 import Duration

from core.connections import bounded
from core.errors import StoreUnavailable
from core.logs import user_ref
from entitlements.v1 import entitlements_pb2 as pb
from server import validation
from server.console.parts import may_write, parts_of, project_of, session_of
from server.console.render import see_other, when
from server.console.views import player_page, player_url
from server.deadletters import DeadLetters
from server.errors import FailedPrecondition, IdempotencyConflict, InvalidArgument, PermissionDenied
from server.store import CONSUMABLE, PERMANENT, TIME_LIMITED

log = structlog.get_logger("server.console")

KINDS = {"": 0, "consumable": CONSUMABLE, "permanent": PERMANENT, "time-limited": TIME_LIMITED}
DURATION_UNITS_S = {"minutes": 60, "hours": 3600, "days": 86_400}
_ENTRY_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")

#: The HTTP status of a refused action, by the error (as the RPCs' status codes).
STATUS_BY_ERROR: tuple[tuple[type[Exception], int], ...] = (
    (InvalidArgument, 400),
    (PermissionDenied, 403),
    (IdempotencyConflict, 409),
    (FailedPrecondition, 409),
    (StoreUnavailable, 503),
)


def actor(request: web.Request) -> str:
    """The actor written to the ledger: `console:<key name>`."""
    return f"console:{session_of(request).principal.name}"


def require_write(request: web.Request) -> None:
    if not may_write(session_of(request).principal):
        raise PermissionDenied(f"API key '{session_of(request).principal.name}' has no write scope")


def text(form: dict[str, Any], name: str) -> str:
    value = form.get(name, "")
    return value if isinstance(value, str) else ""


def reason(form: dict[str, Any]) -> str:
    """The action's reason: required (it is why the operator changed a player's items, on the ledger)."""
    value = text(form, "reason").strip()
    if not value:
        raise InvalidArgument("reason", "is required: say why (it is recorded on the player's ledger)")
    return value


def grant_request(form: dict[str, Any], project_id: int) -> pb.GrantRequest:
    """The Grant request the form stands for.

    Raises:
        InvalidArgument: a field that cannot be one of the request's (kind, quantity, duration).
    """
    kind_text = text(form, "kind")
    if kind_text not in KINDS:
        raise InvalidArgument("kind", f"must be one of {', '.join(k for k in KINDS if k)} or left empty")
    request = pb.GrantRequest(
        project_id=project_id,
        user_id=text(form, "user_id"),
        sku=text(form, "sku").strip(),
        idempotency_key=text(form, "idempotency_key"),
        reason=reason(form),
        kind=KINDS[kind_text],  # type: ignore[arg-type]  # the enum's values
    )
    quantity = text(form, "quantity").strip()
    if quantity:
        if not re.fullmatch(r"[0-9]{1,18}", quantity):
            raise InvalidArgument("quantity", "must be a positive whole number")
        request.quantity = int(quantity)
    duration = text(form, "duration").strip()
    if duration:
        unit = text(form, "duration_unit") or "days"
        if unit not in DURATION_UNITS_S:
            raise InvalidArgument("duration", f"unit must be one of {', '.join(DURATION_UNITS_S)}")
        try:
            amount = Decimal(duration)
        except InvalidOperation:
            raise InvalidArgument("duration", "must be a number") from None
        if not amount.is_finite() or amount <= 0 or amount > 36_500 * 86_400:
            raise InvalidArgument("duration", "must be a positive number within 36,500 days")
        seconds = amount * DURATION_UNITS_S[unit]
        whole = int(seconds)
        request.duration.CopyFrom(Duration(seconds=whole, nanos=int((seconds - whole) * 1_000_000_000)))
    return request


async def _act(
    request: web.Request, apply: Callable[[int, dict[str, Any]], Awaitable[tuple[str, str]]]
) -> web.Response:
    """Runs a player action: on success back to the player page with its outcome; refused, the page again with
    the error and the form as sent."""
    project_id = project_of(request)
    form: dict[str, Any] = {name: value for name, value in (await request.post()).items() if isinstance(value, str)}
    user_id = validation.identifier("user_id", text(form, "user_id"))
    session = session_of(request)
    try:
        require_write(request)
        kind, message = await apply(project_id, form)
    except (InvalidArgument, PermissionDenied, IdempotencyConflict, FailedPrecondition, StoreUnavailable) as exc:
        status = next(code for error, code in STATUS_BY_ERROR if isinstance(exc, error))
        if isinstance(exc, IdempotencyConflict) or getattr(exc, "field", "") == "idempotency_key":
            form.pop("idempotency_key", None)  # the page's next send is a new request, with a new key
        return await player_page(request, project_id, user_id, status=status, error=str(exc), form=form)
    session.flash.append((kind, message))
    return see_other(player_url(project_id, user_id))


async def grant(request: web.Request) -> web.Response:
    parts = parts_of(request)

    async def apply(project_id: int, form: dict[str, Any]) -> tuple[str, str]:
        command = validation.grant_command(grant_request(form, project_id), project_id)
        if validation.takes_catalog_period(command):
            item = await parts.catalogs.known(project_id, command.sku)
            command = validation.with_catalog_period(command, item)
        result = await parts.store.grant(command, actor(request))
        log.info(
            "console_grant",
            operator=actor(request),
            project_id=project_id,
            user=user_ref(command.user_id),
            sku=command.sku,
            quantity=command.quantity,
            replayed=result.replayed,
        )
        held = result.entitlement
        if result.replayed:
            return "ok", f"This grant of {command.sku} had been applied already (the form was sent again): unchanged."
        if held.expires_at_ms is not None:
            return "ok", f"Granted {command.sku}: active until {when(held.expires_at_ms)}."
        return "ok", f"Granted {command.sku}: the player now holds {held.quantity}."

    return await _act(request, apply)


async def revoke(request: web.Request) -> web.Response:
    parts = parts_of(request)

    async def apply(project_id: int, form: dict[str, Any]) -> tuple[str, str]:
        rpc = pb.RevokeRequest(
            project_id=project_id,
            user_id=text(form, "user_id"),
            sku=text(form, "sku").strip(),
            idempotency_key=text(form, "idempotency_key"),
            reason=reason(form),
        )
        command = validation.revoke_command(rpc, project_id)
        result = await parts.store.revoke(command, actor(request))
        log.info(
            "console_revoke",
            operator=actor(request),
            project_id=project_id,
            user=user_ref(command.user_id),
            sku=command.sku,
            revoked=result.previous is not None,
            replayed=result.replayed,
        )
        if result.replayed:
            return "ok", f"This revoke of {command.sku} had been applied already (the form was sent again)."
        if result.previous is None:
            return "error", f"The player held no {command.sku}: nothing revoked."
        return "ok", f"Revoked {command.sku} (the player held {result.previous.quantity})."

    return await _act(request, apply)


async def dead_letter_action(request: web.Request) -> web.Response:
    """Replays (puts back on its event stream) or discards one dead letter of the project."""
    project_id = project_of(request)
    require_write(request)
    action = request.match_info["action"]
    entry_id = request.match_info["entry_id"]
    if not _ENTRY_ID.fullmatch(entry_id):
        raise InvalidArgument("dead letter", "is not a stream entry id such as 1700000000000-0")
    parts = parts_of(request)
    letters = DeadLetters(parts.redis, parts.settings.event_partitions)
    timeout_s = parts.settings.redis_timeout_s
    if action == "replay":
        done = bool(await bounded(letters.replay(project_id, entry_id), timeout_s))
    else:
        done = await bounded(letters.discard(project_id, entry_id), timeout_s) > 0
    log.info(
        "console_dead_letter", action=action, operator=actor(request), project_id=project_id, id=entry_id, done=done
    )
    session = session_of(request)
    if not done:
        gone = f"No dead letter {entry_id} in project {project_id}: replayed or discarded already."
        session.flash.append(("error", gone))
    elif action == "replay":
        session.flash.append(("ok", f"Dead letter {entry_id} is back on its event stream: the consumer applies it."))
    else:
        session.flash.append(("ok", f"Dead letter {entry_id} discarded: it will never be applied."))
    return see_other(f"/p/{project_id}/dead-letters")
