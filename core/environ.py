"""Typed reading of environment variables, shared by every process's settings (service, gateway).

Each value is parsed once, at start-up, and every error names the variable, so a bad deployment fails with a
message that says what to fix.
"""

from __future__ import annotations

import math
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

    def url(self, name: str, default: str, *, schemes: tuple[str, ...]) -> str:
        raw = self.text(name, "") or default
        parsed = urlsplit(raw)
        if parsed.scheme not in schemes or not parsed.netloc:
            raise self._error(f"{name} must be a {' or '.join(schemes)} URL, not {raw!r}")
        return raw.rstrip("/")
