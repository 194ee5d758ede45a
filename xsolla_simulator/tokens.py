"""Player tokens: what a game client passes as `auth` on the order-status WebSocket and as the Bearer token of
the Store API.

Xsolla's are Xsolla Login JWTs or Pay Station access tokens; these look like a JWT (HS256, signed with a key made
per simulator) so code that logs or measures them sees a realistic shape. Only the issuing simulator accepts
them: a token is valid while it is in the issued set, which makes revoking one exact.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xsolla_simulator.errors import InvalidRequest, UnknownToken


@dataclass(frozen=True)
class TokenClaims:
    """Who a token speaks for."""

    user_id: str
    project_id: int


class TokenIssuer:
    """Issues, checks and revokes player tokens for one simulator.

    A token belongs to one project: it opens that project's WebSocket and Get order, never another's.

    Args:
        project_id: the project tokens are issued for unless told otherwise.
        serves: whether the simulator serves a project (a token of a project it does not serve is refused).
    """

    def __init__(self, project_id: int, serves: Callable[[object], bool] | None = None) -> None:
        self._project_id = project_id
        self._serves = serves or (lambda project: project == project_id)
        self._key = secrets.token_bytes(32)
        self._issued: dict[str, TokenClaims] = {}

    def issue(self, user_id: str, *, project_id: int | None = None) -> str:
        """A new token for `user_id` in `project_id` (the simulator's project by default).

        Raises:
            InvalidRequest: `user_id` is empty.
        """
        if not user_id:
            raise InvalidRequest("user_id must be a non-empty string")
        claims = TokenClaims(user_id, self._project_id if project_id is None else project_id)
        payload = {
            "iss": "xsolla-simulator",
            "sub": claims.user_id,
            "project_id": claims.project_id,
            "iat": int(time.time()),
            "jti": secrets.token_hex(8),
        }
        signing_input = _b64(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64(json.dumps(payload).encode())
        signature = hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest()
        token = signing_input + "." + _b64(signature)
        self._issued[token] = claims
        return token

    def claims(self, token: object) -> TokenClaims | None:
        """The claims of an issued, unrevoked token; None for anything else (including non-strings)."""
        if not isinstance(token, str):
            return None
        return self._issued.get(token)

    def authenticate(self, data: Any) -> TokenClaims | None:
        """Who a WebSocket connect command's `data` speaks for; None to refuse it.

        `auth` must be a token issued for a project the simulator serves, `project_id` that token's project,
        and `user_external_id` the token's player when present (current Xsolla SDKs leave it out).
        """
        if not isinstance(data, dict):
            return None
        claims = self.claims(data.get("auth"))
        if claims is None or not self._serves(claims.project_id):
            return None
        project = data.get("project_id")
        if isinstance(project, str) and project.isdigit():
            project = int(project)  # SDKs send a number; a numeric string names the same project
        if isinstance(project, bool) or project != claims.project_id:
            return None
        user = data.get("user_external_id")
        if user is not None and user != claims.user_id:
            return None
        return claims

    def revoke(self, token: str) -> None:
        """Makes `token` invalid from now on (open WebSocket sessions are not closed: break them for that).

        Raises:
            UnknownToken: the token is not currently valid.
        """
        if self._issued.pop(token, None) is None:
            raise UnknownToken("the token is not valid on this simulator")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
