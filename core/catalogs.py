"""The seam between the service's catalogs and a payment provider: what the service asks of a provider's catalog.

A provider package (today `providers.xsolla`) supplies a `CatalogSource`: it reads one project's items (their
kind and, for a time-limited item, its period) and its bundles (what each contains) from the provider's admin
API, with the project's credentials from its provider table (`core.projects.Project.provider`). The service
(`server.catalog`) keeps the last good catalog of each project in Redis and never parses a provider's words.

CatalogError
├── CatalogRefused      the provider refused the credentials (e.g. HTTP 401, 403): retrying cannot help until an
│                       operator fixes them
└── CatalogUnavailable  network error, timeout, rate limit or 5xx that outlasted the source's own retries, or an
                        answer that cannot be read; the next refresh tries again
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from core.projects import Project

#: An item's kind as a catalog source reports it.
CONSUMABLE = "consumable"
PERMANENT = "permanent"
TIME_LIMITED = "time_limited"
KINDS = (CONSUMABLE, PERMANENT, TIME_LIMITED)

#: Units of fixed length, in ms. Months and years are calendar periods (`Period.months`).
UNIT_MS = {"second": 1000, "minute": 60_000, "hour": 3_600_000, "day": 86_400_000, "week": 7 * 86_400_000}
#: Calendar units, in months.
UNIT_MONTHS = {"month": 1, "year": 12}


@dataclass(frozen=True, slots=True)
class Period:
    """How long one unit of a time-limited item lasts: a fixed length (`ms`) or a number of calendar months
    (`months`; a year is 12), exactly one of them positive."""

    ms: int = 0
    months: int = 0

    @classmethod
    def of(cls, value: int, unit: str) -> Period:
        """`value` `unit`s ("minute", "hour", "day", "week", "month", "year"; "second" too).

        Raises:
            ValueError: an unknown unit or a value below 1.
        """
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"a period's value must be a positive integer, not {value!r}")
        if unit in UNIT_MS:
            return cls(ms=value * UNIT_MS[unit])
        if unit in UNIT_MONTHS:
            return cls(months=value * UNIT_MONTHS[unit])
        raise ValueError(f"unknown period unit {unit!r}")

    def __str__(self) -> str:
        if self.months:
            return f"{self.months // 12}y" if self.months % 12 == 0 else f"{self.months}mo"
        for unit, suffix in (("week", "w"), ("day", "d"), ("hour", "h"), ("minute", "m"), ("second", "s")):
            if self.ms % UNIT_MS[unit] == 0:
                return f"{self.ms // UNIT_MS[unit]}{suffix}"
        return f"{self.ms}ms"


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One item as the provider's catalog describes it.

    Attributes:
        sku: the item's sku.
        kind: `CONSUMABLE`, `PERMANENT` or `TIME_LIMITED`.
        period: a time-limited item's period; None for the other kinds.
    """

    sku: str
    kind: str
    period: Period | None = None


@dataclass(frozen=True, slots=True)
class SourceCatalog:
    """A project's catalog as read from the provider.

    Attributes:
        items: sku -> item (virtual items, and virtual currencies as consumables).
        bundles: a bundle's sku -> its contents, (sku, quantity) pairs. A paid order names a bundle as a line and
            its contents as lines of their own; the contents are kept for reconciliation.
    """

    items: Mapping[str, SourceItem] = field(default_factory=lambda: MappingProxyType({}))
    bundles: Mapping[str, tuple[tuple[str, int], ...]] = field(default_factory=lambda: MappingProxyType({}))


class CatalogError(Exception):
    """A catalog could not be read."""


class CatalogRefused(CatalogError):
    """The provider refused the project's credentials."""


class CatalogUnavailable(CatalogError):
    """A temporary failure: the next refresh tries again."""


class CatalogSource(Protocol):
    """Reads projects' catalogs from a provider's admin API."""

    def configured(self, project: Project) -> bool:
        """Whether `project` has what reading its catalog needs (credentials)."""
        ...

    async def fetch(self, project: Project) -> SourceCatalog:
        """Reads the project's whole catalog (every page).

        Raises:
            CatalogRefused, CatalogUnavailable; core.errors.ConfigError when the project's credentials are
            malformed or cannot be read (a file or variable that is gone).
        """
        ...

    async def close(self) -> None:
        """Releases what the source holds (an HTTP session)."""
        ...
