"""The item catalog: which skus are consumable, permanent or time-limited, and a time-limited item's period.

Webhooks name the skus a player bought but not how long a time-limited item lasts (that is a property of the
item in Xsolla's Publisher Account), so the service reads it from a small file, `ENTITLEMENTS_CATALOG_FILE`,
TOML or JSON:

    [items.vip_pass_30d]
    kind = "time_limited"
    period = "30d"            # or "P30D", "12h", "PT12H", "2w", "90m", "45s", or a number of seconds

    [items.sword_of_dawn]
    kind = "permanent"

    [items.gold]
    kind = "consumable"

`kind` also accepts Xsolla's names (`non_consumable`, `non_renewing_subscription`). A sku missing from the
catalog is a plain item: it keeps the kind the player already holds it as, and is a consumable otherwise.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from server.errors import ConfigError
from server.store import CONSUMABLE, KIND_NAMES, PERMANENT, TIME_LIMITED

# The longest period a catalog item may have; the same bound as a Grant's duration.
MAX_PERIOD_MS = 36_500 * 86_400_000

_KINDS = {
    "consumable": CONSUMABLE,
    "permanent": PERMANENT,
    "non_consumable": PERMANENT,
    "time_limited": TIME_LIMITED,
    "time-limited": TIME_LIMITED,
    "non_renewing_subscription": TIME_LIMITED,
}
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
_SHORT = re.compile(r"^(\d+)\s*([smhdw])$")
_ISO = re.compile(r"^P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")
# Months and years: ISO "P1M"/"P1Y" (an M before any T), or "1mo", "1 month", "1y", "2 years".
_CALENDAR = re.compile(r"^(P[^T]*[YM].*|\d+\s*(mo|months?|y|yr|years?))$", re.IGNORECASE)


@dataclass(frozen=True)
class CatalogItem:
    """How a sku is granted: its kind, and for a time-limited item the period one unit adds (ms)."""

    kind: int
    period_ms: int = 0


@dataclass(frozen=True)
class Catalog:
    """A read-only sku -> CatalogItem mapping. The empty catalog makes every sku a plain item."""

    items: Mapping[str, CatalogItem] = field(default_factory=lambda: MappingProxyType({}))

    def lookup(self, sku: str) -> CatalogItem | None:
        """The catalog entry of `sku`, or None for a plain item."""
        return self.items.get(sku)

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "catalog") -> Catalog:
        """Builds a catalog from parsed TOML/JSON (`{"items": {sku: {"kind": ..., "period": ...}}}`).

        Raises:
            ConfigError: the structure, a kind or a period is invalid; the message names the sku.
        """
        unknown = set(data) - {"items"}
        if unknown:
            raise ConfigError(f"{source}: unknown top-level keys {sorted(unknown)}; skus go under [items]")
        raw_items = data.get("items", {})
        if not isinstance(raw_items, Mapping):
            raise ConfigError(f"{source}: `items` must be a table of sku -> {{kind, period}}")
        items: dict[str, CatalogItem] = {}
        for sku, spec in raw_items.items():
            items[sku] = _item(source, sku, spec)
        return cls(MappingProxyType(items))

    @classmethod
    def load(cls, path: Path) -> Catalog:
        """Reads a catalog file: TOML unless its name ends in `.json`.

        Raises:
            ConfigError: the file cannot be read or parsed, or an entry is invalid.
        """
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"ENTITLEMENTS_CATALOG_FILE: cannot read {path}: {exc.strerror or exc}") from exc
        source = f"catalog {path}"
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{source}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from exc
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a table with an `items` table")
        return cls.from_mapping(data, source=source)


def _item(source: str, sku: str, spec: Any) -> CatalogItem:
    where = f"{source}: items.{sku}"
    if not sku or len(sku.encode()) > 256:
        raise ConfigError(f"{where}: a sku is 1..256 bytes")
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a table with `kind` (and `period` for time-limited items)")
    unknown = set(spec) - {"kind", "period"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    kind_name = spec.get("kind")
    kind = _KINDS.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        raise ConfigError(f"{where}: kind must be consumable, permanent or time_limited, not {kind_name!r}")
    if kind != TIME_LIMITED:
        if "period" in spec:
            raise ConfigError(f"{where}: only time_limited items take a period ({KIND_NAMES[kind]} given)")
        return CatalogItem(kind)
    if "period" not in spec:
        raise ConfigError(f'{where}: a time_limited item needs a period, e.g. period = "30d"')
    return CatalogItem(kind, parse_period_ms(spec["period"], where))


def parse_period_ms(value: Any, where: str = "catalog") -> int:
    """Parses a period: seconds as a number, `"<n><s|m|h|d|w>"`, or ISO 8601 `"P30D"`/`"PT12H"`.

    Months and years are refused: they have no fixed length, so the expiry would depend on the calendar.

    Raises:
        ConfigError: the value is not one of those forms, not positive, or longer than 36,500 days.
    """
    ms: int | None = None
    if isinstance(value, bool):
        ms = None
    elif isinstance(value, int):
        ms = value * 1000
    elif isinstance(value, str):
        text = value.strip()
        short = _SHORT.match(text)
        iso = _ISO.match(text.upper()) if text.upper().startswith("P") else None
        if short:
            ms = int(short.group(1)) * _UNIT_MS[short.group(2)]
        elif iso and any(iso.groups()):
            weeks, days, hours, minutes, seconds = (int(g or 0) for g in iso.groups())
            ms = ((((weeks * 7 + days) * 24 + hours) * 60 + minutes) * 60 + seconds) * 1000
        elif _CALENDAR.match(text):
            raise ConfigError(
                f'{where}: months and years have no fixed length; give the period in days (e.g. "30d"), not {value!r}'
            )
    if ms is None:
        raise ConfigError(f'{where}: period must be seconds, "<n>s|m|h|d|w" or ISO 8601 like "P30D", not {value!r}')
    if ms <= 0:
        raise ConfigError(f"{where}: period must be positive, not {value!r}")
    if ms > MAX_PERIOD_MS:
        raise ConfigError(f"{where}: period must be at most 36,500 days, not {value!r}")
    return ms
