"""The projects one simulator serves: each has its own webhook secret, webhook URL and delivery mode.

Xsolla signs a project's webhooks with that project's secret and sends them to that project's URL, so two
projects pointed at one gateway are told apart only by what verifies them (and the project id the body names,
where it names one). Orders, tokens, WebSocket channels, subscriptions and webhooks each belong to one project.

Delivery modes (Xsolla's "combined" and "separate" webhooks, chosen per project):

* `combined` (projects registered after January 22, 2025): everything rides in `order_paid` / `order_canceled`,
  the payment (or refund) in their `billing` object; no `payment` or `refund` webhook is sent.
* `separate` (older projects): `payment` first, and `order_paid` only once the `payment` webhook was acknowledged
  with a 2xx; `refund` first, and `order_canceled` only once the `refund` was acknowledged.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from xsolla_simulator.errors import InvalidRequest

#: The webhook delivery modes a project can have.
WEBHOOK_MODES: Final = ("combined", "separate")

#: The largest project id (Xsolla's are positive integers; the service stores them as int64).
MAX_PROJECT_ID: Final = 2**63 - 1


@dataclass(frozen=True)
class SimProject:
    """One simulated project.

    Attributes:
        project_id: Xsolla's project id (`settings.project_id` in webhooks, the path of Get order, the WebSocket
            connect's `project_id`).
        webhook_url: where the project's webhooks go; None sends none.
        webhook_secret: the project's webhook secret key (signs every body of the project).
        webhook_mode: `combined` or `separate` (see the module docstring).
        merchant_id: written in webhooks' `settings.merchant_id`.
    """

    project_id: int
    webhook_url: str | None = None
    webhook_secret: str = "secret"  # noqa: S105 - a test double's default, as in the documented API
    webhook_mode: str = "combined"
    merchant_id: int = 100001

    def __post_init__(self) -> None:
        if isinstance(self.project_id, bool) or not isinstance(self.project_id, int):
            raise InvalidRequest("project_id must be an integer")
        if not 1 <= self.project_id <= MAX_PROJECT_ID:
            raise InvalidRequest(f"project_id must be between 1 and {MAX_PROJECT_ID}")
        if self.webhook_mode not in WEBHOOK_MODES:
            raise InvalidRequest(f"webhook_mode must be one of {', '.join(WEBHOOK_MODES)}, not {self.webhook_mode!r}")
        if not self.webhook_secret:
            raise InvalidRequest("webhook_secret must be a non-empty string")
        if self.webhook_url is not None and not self.webhook_url.startswith(("http://", "https://")):
            raise InvalidRequest("webhook_url must be an http:// or https:// URL")

    @property
    def separate(self) -> bool:
        """Whether the project gets `payment` / `refund` before its order webhooks."""
        return self.webhook_mode == "separate"


class ProjectBook:
    """The projects of one simulator, by id; the first one added is the default."""

    def __init__(self) -> None:
        self._projects: dict[int, SimProject] = {}

    def add(self, project: SimProject) -> SimProject:
        """Adds a project.

        Raises:
            InvalidRequest: a project with that id is already served.
        """
        if project.project_id in self._projects:
            raise InvalidRequest(f"project {project.project_id} is already served by this simulator")
        self._projects[project.project_id] = project
        return project

    @property
    def default(self) -> SimProject:
        """The first project (the one the single-project arguments describe)."""
        return next(iter(self._projects.values()))

    def get(self, project_id: int | None) -> SimProject:
        """The project with that id (the default one for None).

        Raises:
            InvalidRequest: no such project is served.
        """
        if project_id is None:
            return self.default
        project = self._projects.get(project_id)
        if project is None:
            raise InvalidRequest(f"project {project_id} is not served by this simulator")
        return project

    def serves(self, project_id: object) -> bool:
        """Whether `project_id` is one of these projects."""
        return isinstance(project_id, int) and not isinstance(project_id, bool) and project_id in self._projects

    def __iter__(self) -> Iterator[SimProject]:
        return iter(self._projects.values())

    def __len__(self) -> int:
        return len(self._projects)
