"""Typed reading of environment variables, shared by every process's settings (service, gateway).

Each value is parsed once, at start-up, and every error names the variable, so a bad deployment fails with a
message that says what to fix.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from core.errors import ConfigError


class EnvReader:
    """Parses typed values out of an environment mapping.

    Args:
        env: the variables (normally `os.environ`).
        error: the exception raised for a bad value (each process has its own ConfigError subclass).
    """

    def __init__(self, env: Mapping[str, str], error: type[Exception] = ConfigError) -> None:
        self._env = env
        self._error = error

    def text(self, name: str, default: str) -> str:
        return self._env.get(name, default).strip()

    def file_text(self, name: str) -> str:
        """The content of the file the variable names."""
        path = self.text(name, "")
        try:
            return Path(path).read_text()
        except OSError as exc:
            raise self._error(f"{name}: cannot read {path}: {exc.strerror}") from None

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.text(name, "").lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise self._error(f"{name} must be true or false, not {raw!r}")

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        raw = self.text(name, "")
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise self._error(f"{name} must be an integer, not {raw!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise self._error(f"{name} must be {bound}, not {value}")
        return value

    def optional_integer(self, name: str, *, minimum: int, maximum: int | None = None) -> int | None:
        """An integer as `integer` reads it, or None when the variable is unset or empty."""
        return self.integer(name, minimum, minimum=minimum, maximum=maximum) if self.text(name, "") else None

    def count_or_auto(self, name: str, default: int, *, maximum: int) -> int:
        """A count from 1 to `maximum`, or `auto`: the cores this process may run on (its CPU affinity), at most
        `maximum`."""
        raw = self.text(name, "").lower()
        if raw == "auto":
            return min(maximum, len(os.sched_getaffinity(0)))
        if raw and not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= maximum):
            raise self._error(f"{name} must be auto or a number from 1 to {maximum}, not {raw!r}")
        return int(raw) if raw else default

    def number(self, name: str, default: float, *, minimum: float, maximum: float | None = None) -> float:
        raw = self.text(name, "")
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise self._error(f"{name} must be a number, not {raw!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise self._error(f"{name} must be a finite number of at least {minimum:g}, not {raw!r}")
        if maximum is not None and value > maximum:
            raise self._error(f"{name} must be at most {maximum:g}, not {raw!r}")
        return value

    def optional_number(self, name: str, *, minimum: float, maximum: float | None = None) -> float | None:
        """A number as `number` reads it, or None when the variable is unset or empty."""
        return self.number(name, minimum, minimum=minimum, maximum=maximum) if self.text(name, "") else None

    def url(self, name: str, default: str, *, schemes: tuple[str, ...]) -> str:
        raw = self.text(name, "") or default
        parsed = urlsplit(raw)
        if parsed.scheme not in schemes or not parsed.netloc:
            raise self._error(f"{name} must be a {' or '.join(schemes)} URL, not {raw!r}")
        return raw.rstrip("/")
