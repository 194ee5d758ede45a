"""What the simulator's admin APIs (the catalog lists, the order search) share: Basic auth with a project's or the
merchant's credentials, and the Store API's error body.

Xsolla's admin calls take `Authorization: Basic base64(<project id>:<project API key>)` or
`base64(<merchant id>:<merchant API key>)`; anything else is 401 with `errorCode` 1020 ("Error in Authentication
method occurred"). Error bodies have the Store API's shape, `{"statusCode", "errorCode", "errorMessage":
"[0<status>-<code>]: ...", "transactionId"}`.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Final

from aiohttp import web

AUTH_ERROR: Final = (1020, "Error in Authentication method occurred")


class AdminAuth:
    """The API keys that open the admin APIs of the simulator's projects.

    Args:
        merchant_id: the merchant whose API key (`merchant_api_key`) opens every project.
        merchant_api_key: None: no merchant-wide key.
    """

    def __init__(self, *, merchant_id: int, merchant_api_key: str | None = None) -> None:
        self.merchant_id = merchant_id
        self.merchant_api_key = merchant_api_key
        self._keys: dict[int, str] = {}

    def set_api_key(self, project_id: int, api_key: str | None) -> None:
        """Sets (None: removes) a project's API key."""
        if api_key is None:
            self._keys.pop(project_id, None)
        else:
            self._keys[project_id] = api_key

    def api_key(self, project_id: int) -> str | None:
        """A project's API key, None when it has none."""
        return self._keys.get(project_id)

    def authorized(self, header: str, project_id: int) -> bool:
        """Whether an `Authorization` header opens `project_id`'s admin APIs."""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, key = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        project_key = self._keys.get(project_id)
        if user == str(project_id) and project_key is not None:
            return key == project_key
        return user == str(self.merchant_id) and self.merchant_api_key is not None and key == self.merchant_api_key


def store_error(status: int, code: int, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    """An error answer with the Store API's body."""
    body = {
        "statusCode": status,
        "errorCode": code,
        "errorMessage": f"[{status:04d}-{code:04d}]: {message}",
        "transactionId": uuid.uuid4().hex,
    }
    return web.json_response(body, status=status, headers=headers)
