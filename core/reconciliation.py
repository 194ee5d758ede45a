"""The seam between reconciliation and a payment provider: what the service asks of a provider about its orders.

Webhooks can be lost for good (a misconfigured secret, an outage longer than the provider's retries, a webhook URL
missing on one project). Reconciliation finds the orders the provider considers paid that this service never
applied, from the provider's own records:

- `OrderLookup.order` (`core.order_sources`): one order with its items, read with the player's token, for an
  order a GetOrderStatus stream follows (the tracker's reconciliation);
- `OrderSearch`: the provider's admin search of a project's orders by creation date, read with the project's
  API credentials, for the periodic sweep.

Both answer in `ProviderOrder`, in the service's vocabulary (the status as an `entitlements.v1.OrderStatus`
value, items as sku, quantity and the provider's item type), so `server.reconcile` never parses a provider's words.

SearchError
├── SearchRefused          the provider refused the credentials (e.g. HTTP 401, 403): retrying cannot help until
│                          an operator fixes them
└── SearchUnavailable      network error, timeout, 5xx, or an answer that cannot be read; the next attempt may work
    └── SearchRateLimited  the provider asked to slow down (HTTP 429): wait `retry_after_s` before the next request
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from core.order_sources import ReportedStatus
from core.projects import Project

#: The provider's item type of a bundle: its contents are granted, through the project's catalog.
BUNDLE = "bundle"


@dataclass(frozen=True, slots=True)
class ProviderOrderItem:
    """One line of an order as the provider records it.

    Attributes:
        sku: the item's sku.
        quantity: units bought (>= 1 when the provider is sane; the service checks it).
        type: the provider's item type when it says ("virtual_good", "virtual_currency", "bundle", ...); ""
            when it does not (Xsolla's Get order names no type: a bundle is then known from the catalog).
        amount: the line's price as the provider wrote it (a decimal string), for the record; "" when absent.
        is_free, is_bonus: as the provider flags the line.
    """

    sku: str
    quantity: int
    type: str = ""
    amount: str = ""
    is_free: bool = False
    is_bonus: bool = False


@dataclass(frozen=True, slots=True)
class ProviderOrder:
    """One order as the provider records it.

    Attributes:
        project_id: the provider's project.
        order_id: the provider's order id, as a string.
        status: the order's status at the provider, in the service's vocabulary (`ReportedStatus.status` is None
            for a word the provider's vocabulary does not hold).
        user_id: the player, when the provider says ("" when it does not: Xsolla's admin search may leave
            `user.id` out, and Get order never names the player).
        created_at_ms: when the provider created the order (ms since the epoch; 0 when unknown).
        sandbox: a test order (Xsolla's `mode` "sandbox").
        items: the order's lines.
        currency, amount: the order's total price as the provider wrote it; "" when absent.
        invoice_id: the provider's invoice (payment) id, "" when absent.
    """

    project_id: int
    order_id: str
    status: ReportedStatus
    user_id: str = ""
    created_at_ms: int = 0
    sandbox: bool = False
    items: tuple[ProviderOrderItem, ...] = ()
    currency: str = ""
    amount: str = ""
    invoice_id: str = ""


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of a search.

    Attributes:
        orders: the page's orders, in the provider's order.
        has_more: whether a page follows (at the next offset).
        total: how many orders the whole search matches, when the provider says; None otherwise.
    """

    orders: tuple[ProviderOrder, ...]
    has_more: bool
    total: int | None = None


class SearchError(Exception):
    """A search page could not be read."""


class SearchRefused(SearchError):
    """The provider refused the project's credentials."""


class SearchUnavailable(SearchError):
    """A temporary failure: a later attempt may work."""


class SearchRateLimited(SearchUnavailable):
    """The provider asked to slow down.

    Attributes:
        retry_after_s: how long to wait before the next request (the provider's `Retry-After`, or a default).
    """

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OrderSearch(Protocol):
    """Searches a project's orders by creation date, with the project's admin credentials."""

    #: The most orders one page may hold (Xsolla: 10).
    max_page_size: int

    def configured(self, project: Project) -> bool:
        """Whether `project` has what searching its orders needs (credentials)."""
        ...

    async def search(
        self, project: Project, created_from_ms: int, created_until_ms: int, *, offset: int, limit: int
    ) -> SearchPage:
        """One page of the orders created in [`created_from_ms`, `created_until_ms`] (ms since the epoch), from
        `offset`, at most `limit` (<= `max_page_size`) of them.

        Raises:
            SearchRefused, SearchUnavailable (SearchRateLimited); core.errors.ConfigError when the project's
            credentials are malformed or cannot be read (a file or variable that is gone).
        """
        ...

    async def close(self) -> None:
        """Releases what the search holds (an HTTP session)."""
        ...
