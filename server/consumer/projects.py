"""Which projects' event streams the consumer reads: those configured, and those the gateway registered in
`PROJECTS_KEY` since, when this service serves them and its connections have room for their readers."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from core.connections import RedisClient, reply_text
from core.keys import PROJECTS_KEY

log = structlog.get_logger("server.consumer")

# Consecutive failures to read the registered projects between two log lines.
_FAILURE_LOG_EVERY = 20


async def registered_projects(redis: RedisClient) -> list[int]:
    """The projects in `PROJECTS_KEY`, ascending; a member that is not a project id is logged and left out.

    Raises:
        redis.exceptions.RedisError, OSError: Redis failed.
    """
    projects = []
    for member in await redis.smembers(PROJECTS_KEY):
        text = reply_text(member, errors="replace")
        if not text.isdigit() or int(text) <= 0:
            log.error("consumer_project_invalid", member=text[:64], key=PROJECTS_KEY)
            continue
        projects.append(int(text))
    return sorted(projects)


class ProjectDirectory:
    """The registered projects, and the decision to read each (made once per project).

    Args:
        redis: where `PROJECTS_KEY` is.
        served: whether this service serves a project; None: every project.
        max_projects: the most projects read at once (the consumer's pool has room for that many); None: no limit.
    """

    def __init__(self, redis: RedisClient, *, served: Callable[[int], bool] | None, max_projects: int | None) -> None:
        self._redis = redis
        self._served = served
        self._max_projects = max_projects
        self._failures = 0
        # Registered projects not read (not served, or no room), each reported once.
        self.passed_over: set[int] = set()

    async def registered(self) -> list[int]:
        """The projects in `PROJECTS_KEY` (none while Redis does not answer: the readers report that)."""
        try:
            projects = await registered_projects(self._redis)
            self._failures = 0
        except Exception as exc:  # Redis down: try again at the next turn
            self._failures += 1
            if self._failures == 1 or self._failures % _FAILURE_LOG_EVERY == 0:
                log.warning("consumer_projects_unread", error=f"{type(exc).__name__}: {exc}")
            return []
        return projects

    def admits(self, project_id: int, reading: int, consumer: str) -> bool:
        """Whether to start reading a newly registered project, `reading` projects being read already. A project
        refused is not asked about again (and said once in the log)."""
        if project_id in self.passed_over:
            return False
        if self._served is not None and not self._served(project_id):
            self.passed_over.add(project_id)
            log.warning(
                "consumer_project_not_served",
                project_id=project_id,
                consumer=consumer,
                message="this project has events but is not one this service serves: they stay in its stream "
                "until a service that serves it reads them (add it to the projects file to apply them here)",
            )
            return False
        if self._max_projects is not None and reading >= self._max_projects:
            self.passed_over.add(project_id)
            log.error(
                "consumer_projects_full",
                project_id=project_id,
                consumer=consumer,
                projects=reading,
                message="this project's events are not read until the service restarts (its connections are "
                "sized at start for the projects known then, with room for a few more)",
            )
            return False
        log.info("consumer_project_found", project_id=project_id, consumer=consumer)
        return True
