"""A catalog: which skus are consumable, permanent or time-limited, a time-limited item's period, and what each
bundle contains.

A project's catalog comes from its provider's admin catalog API (`server.catalog.catalogs`) and/or a local file,
TOML or JSON, which overrides or completes it:

    [items.vip_pass_30d]
    kind = "time_limited"
    period = "30d"            # or "P30D", "12h", "PT12H", "2w", "90m", "45s", a number of seconds,
                              # or calendar months and years: "1mo", "3 months", "P1M", "1y", "P1Y"

    [items.sword_of_dawn]
    kind = "permanent"

    [items.gold]
    kind = "consumable"

`kind` also accepts the provider's names (`non_consumable`, `non_renewing_subscription`). Fixed periods are a
number of ms; months and years are calendar periods, added on the Redis server's clock in UTC (one month after
Jan 31 is Feb 28, or 29; see `server/lua/kinds.lua`).
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

from core import catalogs as source
from server.errors import ConfigError
from server.store import CONSUMABLE, KIND_NAMES, PERMANENT, TIME_LIMITED

# The longest period a catalog item may have; the same bound as a Grant's duration (36,500 days, 1,200 months).
MAX_PERIOD_MS = 36_500 * 86_400_000
MAX_PERIOD_MONTHS = 1200

_KINDS = {
    "consumable": CONSUMABLE,
    "permanent": PERMANENT,
    "non_consumable": PERMANENT,
    "time_limited": TIME_LIMITED,
    "time-limited": TIME_LIMITED,
    "non_renewing_subscription": TIME_LIMITED,
}
_SOURCE_KINDS = {source.CONSUMABLE: CONSUMABLE, source.PERMANENT: PERMANENT, source.TIME_LIMITED: TIME_LIMITED}
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
_SHORT = re.compile(r"^(\d+)\s*([smhdw])$")
_MONTHS = re.compile(r"^(\d+)\s*(mo|months?)$", re.IGNORECASE)
_YEARS = re.compile(r"^(\d+)\s*(y|yr|years?)$", re.IGNORECASE)
_ISO = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


@dataclass(frozen=True)
class CatalogItem:
    """How a sku is granted: its kind, and for a time-limited item the period one unit adds: `period_ms`, or
    `period_months` calendar months."""

    kind: int
    period_ms: int = 0
    period_months: int = 0

    @property
    def period_text(self) -> str:
        """The period as the catalog file writes it ("30d", "1mo"); empty for other kinds."""
        if self.kind != TIME_LIMITED:
            return ""
        return str(source.Period(self.period_ms, self.period_months))


def _no_items() -> Mapping[str, CatalogItem]:
    return MappingProxyType({})


def _no_bundles() -> Mapping[str, tuple[tuple[str, int], ...]]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Catalog:
    """A read-only catalog. The empty catalog knows no sku.

    Attributes:
        items: sku -> CatalogItem.
        bundles: a bundle's sku -> its contents as (sku, quantity) pairs (the provider's; a local file has none).
        fetched_at_ms: when the provider's part was read (0: it has none).
    """

    items: Mapping[str, CatalogItem] = field(default_factory=_no_items)
    bundles: Mapping[str, tuple[tuple[str, int], ...]] = field(default_factory=_no_bundles)
    fetched_at_ms: int = 0

    def lookup(self, sku: str) -> CatalogItem | None:
        """The catalog entry of `sku`, or None when the catalog does not know it."""
        return self.items.get(sku)

    def __len__(self) -> int:
        return len(self.items)

    def completed_by(self, local: Catalog) -> Catalog:
        """This catalog with `local`'s items added, replacing this one's where both have a sku."""
        if not local.items:
            return self
        return Catalog(MappingProxyType({**self.items, **local.items}), self.bundles, self.fetched_at_ms)

    @classmethod
    def from_source(cls, catalog: source.SourceCatalog, fetched_at_ms: int) -> Catalog:
        """The service's form of a catalog read from the provider."""
        items = {
            sku: CatalogItem(
                _SOURCE_KINDS[item.kind],
                item.period.ms if item.period else 0,
                item.period.months if item.period else 0,
            )
            for sku, item in catalog.items.items()
        }
        return cls(MappingProxyType(items), MappingProxyType(dict(catalog.bundles)), fetched_at_ms)

    def to_json(self) -> str:
        """The form kept in Redis (`core.keys.catalog_key`): `{"v": 1, "fetched_at_ms", "items": {sku: [kind,
        period_ms, period_months]}, "bundles": {sku: [[sku, quantity], ...]}}`."""
        return json.dumps(
            {
                "v": 1,
                "fetched_at_ms": self.fetched_at_ms,
                "items": {sku: [i.kind, i.period_ms, i.period_months] for sku, i in self.items.items()},
                "bundles": {sku: [list(pair) for pair in contents] for sku, contents in self.bundles.items()},
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Catalog:
        """Reads `to_json`'s form.

        Raises:
            ValueError: not that form.
        """
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("v") != 1:
            raise ValueError("not a stored catalog of version 1")
        items = {str(sku): CatalogItem(int(k), int(p), int(m)) for sku, (k, p, m) in data["items"].items()}
        bundles = {str(sku): tuple((str(s), int(q)) for s, q in contents) for sku, contents in data["bundles"].items()}
        return cls(MappingProxyType(items), MappingProxyType(bundles), int(data["fetched_at_ms"]))

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
            raise ConfigError(f"catalog file {path}: cannot read it: {exc.strerror or exc}") from exc
        where = f"catalog {path}"
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{where}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from exc
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a table with an `items` table")
        return cls.from_mapping(data, source=where)


def _item(where_file: str, sku: str, spec: Any) -> CatalogItem:
    where = f"{where_file}: items.{sku}"
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
    period = parse_period(spec["period"], where)
    return CatalogItem(kind, period.ms, period.months)


def parse_period(value: Any, where: str = "catalog") -> source.Period:
    """Parses a period: seconds as a number, `"<n><s|m|h|d|w>"`, ISO 8601 `"P30D"`/`"PT12H"`, or calendar months
    and years: `"<n>mo"`, `"<n> months"`, `"<n>y"`, `"<n> years"`, `"P1M"`, `"P1Y"`, `"P1Y6M"`.

    Raises:
        ConfigError: not one of those forms (months mixed with days or hours included), not positive, or longer
            than 36,500 days (1,200 months).
    """
    ms: int | None = None
    months = 0
    if isinstance(value, bool):
        ms = None
    elif isinstance(value, int):
        ms = value * 1000
    elif isinstance(value, str):
        text = value.strip()
        iso = _ISO.match(text.upper()) if text.upper().startswith("P") else None
        if short := _SHORT.match(text):
            ms = int(short.group(1)) * _UNIT_MS[short.group(2)]
        elif calendar := _MONTHS.match(text) or _YEARS.match(text):
            months, ms = int(calendar.group(1)) * (1 if calendar.re is _MONTHS else 12), 0
        elif iso and any(iso.groups()):
            years, month_count, weeks, days, hours, minutes, seconds = (int(g or 0) for g in iso.groups())
            if (years or month_count) and (weeks or days or hours or minutes or seconds):
                raise ConfigError(f"{where}: give a period in months/years or in fixed units, not both: {value!r}")
            months = years * 12 + month_count
            ms = ((((weeks * 7 + days) * 24 + hours) * 60 + minutes) * 60 + seconds) * 1000
    if ms is None:
        raise ConfigError(
            f'{where}: period must be seconds, "<n>s|m|h|d|w", "<n>mo", "<n>y" or ISO 8601 like "P30D" or "P1M", '
            f"not {value!r}"
        )
    if ms <= 0 and months <= 0:
        raise ConfigError(f"{where}: period must be positive, not {value!r}")
    if ms > MAX_PERIOD_MS or months > MAX_PERIOD_MONTHS:
        raise ConfigError(f"{where}: period must be at most 36,500 days (1,200 months), not {value!r}")
    return source.Period(ms, months)
