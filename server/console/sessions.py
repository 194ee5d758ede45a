"""The console's sessions and its guard against guessing keys.

A session is a random token in an HttpOnly, SameSite=Strict cookie, held in this process's memory with the
operator's principal and a CSRF token that every form of the session carries. It ends on logout, or once unused for
the idle timeout. Sessions are per replica: behind a load balancer, pin a console user to one replica (or run the
console on one).

Failed logins are counted per client address over a sliding minute; past the limit, logins from that address are
refused without looking at the key, until the minute has passed.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from server.auth import Principal

#: Sessions held at once; the least recently used one is forgotten beyond it.
MAX_SESSIONS = 10_000
#: Client addresses whose failures are remembered at once; the oldest is forgotten beyond it.
MAX_ADDRESSES = 10_000
FAILURE_WINDOW_S = 60.0


@dataclass
class Session:
    """One logged-in operator.

    Attributes:
        token: the cookie's value.
        principal: the key the operator logged in with (its name is the operator's name).
        csrf: the token every form of this session carries.
        last_seen: monotonic time of the last request.
        flash: a message for the next page shown (the outcome of an action), then cleared.
    """

    token: str
    principal: Principal
    csrf: str
    last_seen: float
    flash: list[tuple[str, str]] = field(default_factory=list)

    def csrf_matches(self, sent: str | None) -> bool:
        """Whether a form's CSRF token is this session's."""
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf.encode())

    def take_flash(self) -> list[tuple[str, str]]:
        """The pending messages ((kind, text): kind "ok" or "error"), cleared."""
        messages, self.flash = self.flash, []
        return messages


class Sessions:
    """The console's sessions in memory, with an idle timeout.

    Args:
        idle_s: how long an unused session lasts.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, idle_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._idle_s = idle_s
        self._clock = clock
        # Insertion order is recency order: a session used is moved to the end.
        self._sessions: dict[str, Session] = {}

    def open(self, principal: Principal) -> Session:
        """Starts a session for a principal that just logged in."""
        self._expire()
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.pop(next(iter(self._sessions)))
        session = Session(secrets.token_urlsafe(32), principal, secrets.token_urlsafe(32), self._clock())
        self._sessions[session.token] = session
        return session

    def get(self, token: str | None) -> Session | None:
        """The live session of a cookie's token (its idle time restarts), or None."""
        if not token:
            return None
        session = self._sessions.pop(token, None)
        if session is None:
            return None
        now = self._clock()
        if now - session.last_seen > self._idle_s:
            return None
        session.last_seen = now
        self._sessions[token] = session
        return session

    def close(self, token: str | None) -> None:
        """Ends a session (logout)."""
        if token:
            self._sessions.pop(token, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire(self) -> None:
        cutoff = self._clock() - self._idle_s
        for token in [t for t, s in self._sessions.items() if s.last_seen < cutoff]:
            del self._sessions[token]


class LoginGuard:
    """Counts failed logins per client address over a sliding minute.

    Args:
        failures_per_minute: failures allowed per address within `FAILURE_WINDOW_S`.
        clock: monotonic seconds.
    """

    def __init__(self, failures_per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = failures_per_minute
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def retry_after_s(self, address: str) -> float:
        """0 when `address` may try to log in now; else how many seconds until it may."""
        failures = self._recent(address)
        if failures is None or len(failures) < self._limit:
            return 0.0
        return max(0.0, failures[0] + FAILURE_WINDOW_S - self._clock())

    def failed(self, address: str) -> None:
        """Records a failed login from `address`."""
        failures = self._recent(address)
        if failures is None:
            while len(self._failures) >= MAX_ADDRESSES:
                self._failures.pop(next(iter(self._failures)))
            failures = self._failures[address] = deque()
        failures.append(self._clock())
        while len(failures) > self._limit:
            failures.popleft()

    def succeeded(self, address: str) -> None:
        """Forgets the failures of an address that logged in."""
        self._failures.pop(address, None)

    def _recent(self, address: str) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        cutoff = self._clock() - FAILURE_WINDOW_S
        while failures and failures[0] < cutoff:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures
