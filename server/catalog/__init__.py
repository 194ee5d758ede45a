"""Catalogs: how each sku of a project is granted (consumable, permanent, or time-limited with its period).

Modules:

- `items`: `Catalog` and `CatalogItem`, the local catalog file's format, periods (fixed or calendar months).
- `catalogs`: `Catalogs`, each served project's catalog in the service: read from the provider's admin catalog
  API (`core.catalogs`), kept in Redis, completed by a local file, refreshed periodically, on an unknown sku and
  on demand.
"""

from server.catalog.catalogs import MISS_MIN_AGE_S, MISS_REFRESH_INTERVAL_S, Catalogs, Refresh
from server.catalog.items import MAX_PERIOD_MONTHS, MAX_PERIOD_MS, Catalog, CatalogItem, parse_period

__all__ = [
    "MAX_PERIOD_MONTHS",
    "MAX_PERIOD_MS",
    "MISS_MIN_AGE_S",
    "MISS_REFRESH_INTERVAL_S",
    "Catalog",
    "CatalogItem",
    "Catalogs",
    "Refresh",
    "parse_period",
]
