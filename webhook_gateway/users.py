"""The user directory: who decides whether a player exists, for Xsolla's `user_validation` and `user_search`.

Xsolla asks synchronously, while the player is in the payment UI, and does not retry `user_validation`: the
answer must come quickly, and a directory that cannot answer makes the gateway reply 503 (never "unknown
user" for a directory that is merely down).

Two directories ship:

- `AllowAllDirectory` (`GATEWAY_USER_DIRECTORY=allow_all`, the development default): every player exists; a
  search answers with the public id as the player id.
- `HttpUserDirectory` (`GATEWAY_USER_DIRECTORY=http`): asks the studio's backend at a configured URL.

The HTTP protocol (also in docs/WEBHOOKS.md): `POST <url>` with `Content-Type: application/json` and, when a
token is configured, `Authorization: Bearer <token>`; the body is

    {"action": "validate" | "search", "provider": "xsolla", "project_id": 18404,
     "user_id": "1234567", "public_id": "", "user": {...the user object as Xsolla sent it...}}

and the backend answers 2xx when the player exists (a search answers 200 with a JSON object holding at least
`"id"`, and optionally `name`, `public_id`, `email`, `phone`), 404 when it does not. Any other status, a
connection error, a malformed search answer or no answer within the timeout counts as unavailable.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any, Protocol

import aiohttp

from core.webhooks import FoundUser, UserQuery
from webhook_gateway.errors import InvalidUser, UserDirectoryUnavailable

# A search answer larger than this is not a user record.
_MAX_ANSWER_BYTES = 64 * 1024


class UserDirectory(Protocol):
    """Answers questions about players. Implementations are built, started and closed by the gateway."""

    name: str

    async def start(self) -> None:
        """Acquires what the directory needs (an HTTP session); called inside the running event loop."""
        ...

    async def close(self) -> None:
        """Releases it."""
        ...

    async def validate(self, query: UserQuery) -> None:
        """Returns when `query.user_id` exists.

        Raises:
            InvalidUser: the player does not exist.
            UserDirectoryUnavailable: the directory could not answer.
        """
        ...

    async def search(self, query: UserQuery) -> FoundUser:
        """Finds the player with `query.public_id`.

        Raises:
            InvalidUser: no such player.
            UserDirectoryUnavailable: the directory could not answer.
        """
        ...


class AllowAllDirectory:
    """Every player exists. For development only: in production the studio's backend must decide."""

    name = "allow_all"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def validate(self, query: UserQuery) -> None:
        return None

    async def search(self, query: UserQuery) -> FoundUser:
        return FoundUser(id=query.user_id or query.public_id, public_id=query.public_id)


class HttpUserDirectory:
    """Asks the studio's backend over HTTP (protocol in the module docstring).

    Args:
        url: the backend's endpoint.
        timeout_s: upper bound of one question, connection included.
        token: sent as `Authorization: Bearer <token>` when set; never logged.
    """

    name = "http"

    def __init__(self, url: str, *, timeout_s: float, token: str | None = None) -> None:
        self._url = url
        self._timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout_s))

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def validate(self, query: UserQuery) -> None:
        status, _ = await self._ask("validate", query)
        if status == 404:
            raise InvalidUser()
        if not 200 <= status < 300:
            raise UserDirectoryUnavailable(f"the user directory answered HTTP {status}")

    async def search(self, query: UserQuery) -> FoundUser:
        status, body = await self._ask("search", query)
        if status == 404:
            raise InvalidUser()
        if status != 200:
            raise UserDirectoryUnavailable(f"the user directory answered HTTP {status}")
        try:
            found = json.loads(body)
        except ValueError:
            raise UserDirectoryUnavailable("the user directory's search answer is not JSON") from None
        if not isinstance(found, dict) or not isinstance(found.get("id"), str) or not found["id"]:
            raise UserDirectoryUnavailable("the user directory's search answer has no string 'id'")
        fields = {key: found[key] for key in ("public_id", "name", "email", "phone") if isinstance(found.get(key), str)}
        return FoundUser(id=found["id"], **fields)

    async def _ask(self, action: str, query: UserQuery) -> tuple[int, bytes]:
        if self._session is None:
            raise RuntimeError("HttpUserDirectory.start() was not called")
        document = {
            "action": action,
            "provider": query.provider,
            "project_id": query.project_id,
            "user_id": query.user_id,
            "public_id": query.public_id,
            "user": query.user,
        }
        body = json.dumps(document, default=_json_default, separators=(",", ":")).encode()
        try:
            async with self._session.post(self._url, data=body, headers=self._headers) as response:
                answer = await response.content.read(_MAX_ANSWER_BYTES)
                return response.status, answer
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UserDirectoryUnavailable(f"the user directory did not answer: {type(exc).__name__}") from exc


def build_directory(kind: str, *, url: str | None, timeout_s: float, token: str | None) -> UserDirectory:
    """The directory named by `GATEWAY_USER_DIRECTORY`.

    Raises:
        ValueError: an unknown kind, or `http` without a URL.
    """
    if kind == "allow_all":
        return AllowAllDirectory()
    if kind == "http":
        if not url:
            raise ValueError("the http user directory needs a URL")
        return HttpUserDirectory(url, timeout_s=timeout_s, token=token)
    raise ValueError(f"unknown user directory {kind!r}")


def _json_default(value: Any) -> Any:
    # Bodies are parsed with exact decimals; the backend gets plain JSON numbers back.
    if isinstance(value, Decimal):
        if value.is_finite() and abs(value.adjusted()) < 20 and value == value.to_integral_value():
            return int(value)
        number = float(value)
        return number if math.isfinite(number) else str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
