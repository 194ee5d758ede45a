"""What every call to Xsolla's admin APIs shares (the catalog lists, the order search): the project's Basic
credentials, the reading of `Retry-After`, and one HTTP session per client (`AdminClient`).

Credentials: `Authorization: Basic base64(<api_user>:<api_key>)`, the merchant id or the project id and an API key
of the Publisher Account. The project's table in the projects file gives them (`api_key`, as a secret: text,
`{ file = ... }` or `{ env = ... }`; `api_user`, default the project id); without a projects file,
`providers.xsolla.catalog.with_env_credentials` puts `ENTITLEMENTS_XSOLLA_API_KEY` and `_API_USER` there.
"""

from __future__ import annotations

import base64
import time
from email.utils import parsedate_to_datetime

import aiohttp

from core.errors import ConfigError
from core.projects import Project, secret_value
from providers.xsolla.metrics import XsollaMetrics


class AdminClient:
    """The base of the admin API clients: the API's base URL, one HTTP session opened on first use (inside the
    running event loop) and closed by `close`, the metrics, and which projects have credentials.

    Args:
        admin_api: the API's base URL, e.g. "https://store.xsolla.com/api".
        http_timeout_s: the timeout of one request, connection included.
        metrics: where requests are counted (by operation and result), never by order or player.
    """

    def __init__(self, admin_api: str, http_timeout_s: float, metrics: XsollaMetrics) -> None:
        self._base = admin_api.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=http_timeout_s)
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None

    def configured(self, project: Project) -> bool:
        """Whether the project has an API key (`has_credentials`)."""
        return has_credentials(project)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers={"Accept": "application/json"})
        return self._session


def has_credentials(project: Project) -> bool:
    """Whether the project has an API key for Xsolla's admin APIs (whether it can be read is `credentials`')."""
    return "api_key" in project.provider


def credentials(project: Project) -> str:
    """The `Authorization` header of a project's admin API calls: Basic `<api_user>:<api_key>` in base64.

    Raises:
        ConfigError: no `api_key`, or it or `api_user` is malformed or cannot be read.
    """
    where = f"project {project.id}: api_key"
    if not has_credentials(project):
        raise ConfigError(f"project {project.id}: no api_key for Xsolla's admin API")
    key = secret_value(project.provider["api_key"], where)
    user = project.provider.get("api_user", project.id)
    if isinstance(user, bool) or not isinstance(user, int | str) or not str(user).isdigit():
        raise ConfigError(f"project {project.id}: api_user must be the merchant or project id")
    return "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()


def retry_after_s(value: str | None, *, now_s: float | None = None) -> float | None:
    """`Retry-After` in seconds from now: its delay-seconds form, or its HTTP-date form (0 when the date is past);
    None when absent or unreadable.

    Args:
        now_s: the current time (seconds since the epoch), for the date form; the clock's by default.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # an HTTP date is GMT; a date without a zone is not one
        return None
    return max(0.0, moment.timestamp() - (time.time() if now_s is None else now_s))
