"""The answers Xsolla expects from a webhook endpoint: its error body and its `user_search` answer.

Xsolla reads `{"error": {"code": ..., "message": ...}}` from a 4xx or 5xx answer (the codes of its PHP SDK:
INVALID_SIGNATURE, INVALID_PARAMETER, INVALID_USER, INVALID_CLIENT_IP, SERVER_ERROR), retries 5xx and stops at
4xx. A found player is `{"user": {"id": ..., "public_id": ..., ...}}`, empty fields left out.
"""

from __future__ import annotations

import json

from core.webhooks import FoundUser

#: Xsolla's generic code for a server-side failure (official PHP SDK: SERVER_ERROR -> 5xx).
SERVER_ERROR = "SERVER_ERROR"

# The gateway's reasons (its `result` labels) that have a code of their own; every other 4xx is a parameter.
_CODES = {
    "invalid_signature": "INVALID_SIGNATURE",
    "invalid_user": "INVALID_USER",
    "forbidden": "INVALID_CLIENT_IP",
}


def error_code(status: int, result: str) -> str:
    """Xsolla's error code for an answer with `status` given for the gateway's reason `result`."""
    if status >= 500:
        return SERVER_ERROR
    return _CODES.get(result, "INVALID_PARAMETER")


def error_body(status: int, result: str, message: str) -> bytes:
    """Xsolla's error body: `{"error": {"code": ..., "message": ...}}` as compact JSON bytes."""
    body = {"error": {"code": error_code(status, result), "message": message}}
    return json.dumps(body, separators=(",", ":")).encode()


def user_answer(found: FoundUser) -> bytes:
    """Xsolla's user search answer: `{"user": {"id": ..., "public_id": ..., ...}}`, empty fields left out."""
    user = {
        key: value
        for key, value in (
            ("id", found.id),
            ("public_id", found.public_id),
            ("name", found.name),
            ("email", found.email),
            ("phone", found.phone),
        )
        if value
    }
    return json.dumps({"user": user}, separators=(",", ":")).encode()
