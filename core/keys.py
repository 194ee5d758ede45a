"""Every Redis key the service uses, built in one place: layout version 2, where every record belongs to a project.

All keys of one player of one project share the hash tag `{u:<project>:<user>}`, so they live in one Redis Cluster
slot and a Lua script can touch them together; the same player id in two projects is two players. User ids are
percent-encoded where they hold `{`, `}`, `%` or non-printable bytes, so a user id can never break out of its hash
tag or collide with another; the project is digits, so `{u:1:a:b}` is player `a:b` of project 1. Each partition of
a project's event log shares `{ev:<project>:<partition>}`; what concerns a project as a whole shares `{p:<project>}`.

The layout's version is stored under `LAYOUT_KEY` (`core.layout` checks it at start and migrates a store written
by version 1, where keys had no project: `{u:<user>}`, `{ev:<partition>}`).
"""

from __future__ import annotations

import functools
from urllib.parse import quote

PREFIX = "ent"
#: The version of the layout below; a store written with another one is refused at start (`core.layout`).
LAYOUT_VERSION = 2
#: String: the layout version the store was written with.
LAYOUT_KEY = f"{PREFIX}:layout"
#: Set: every project that has events (the gateway adds a project before its first append; the consumer reads the
#: event streams of each).
PROJECTS_KEY = f"{PREFIX}:projects"
#: String, deleted at once (and expiring within a minute): written at the gateway's start to find out whether the
#: store's writes become durable (fsynced, replicated) in time (`core.durability.probe`).
DURABILITY_PROBE_KEY = f"{PREFIX}:durability-probe"
# Characters kept as they are in a key; everything else (notably `{`, `}` and `%`) is percent-encoded.
_SAFE = "!#$&'()*+,-./:;<=>?@[]^_`|~"


def encode_user(user_id: str) -> str:
    """A user id as it appears in a hash tag: percent-encoded where it holds `{`, `}`, `%` or non-printables."""
    return quote(user_id, safe=_SAFE)


@functools.lru_cache(maxsize=65_536)
def _tag(project_id: int, user_id: str) -> str:
    return "{u:" + str(int(project_id)) + ":" + encode_user(user_id) + "}"


def items_key(project_id: int, user_id: str) -> str:
    """The player's items hash (`UserKeys(project_id, user_id).items`), without building the other keys: the read
    path."""
    return f"{PREFIX}:{_tag(project_id, user_id)}:items"


class UserKeys:
    """The keys of one player's data in one project."""

    __slots__ = (
        "event_prefix",
        "expiry",
        "follow_prefix",
        "idempotency_prefix",
        "index_state",
        "items",
        "ledger",
        "live",
        "order_prefix",
        "skus",
        "subscriptions",
        "subscriptions_active",
        "subscriptions_order",
        "tag",
        "timed",
        "upstream_prefix",
        "version",
    )

    def __init__(self, project_id: int, user_id: str) -> None:
        self.tag = _tag(project_id, user_id)
        base = f"{PREFIX}:{self.tag}"
        #: hash sku -> JSON entitlement record
        self.items = f"{base}:items"
        #: sorted set of every held sku (all scores 0) for paging in sku order
        self.skus = f"{base}:skus"
        #: stream: the audit ledger of every change
        self.ledger = f"{base}:ledger"
        #: hash subscription id -> JSON recurring subscription (written from Xsolla webhooks)
        self.subscriptions = f"{base}:subs"
        # The read indexes (server/lua/index.lua keeps them): a listing reads what its page needs, however long
        # the player's history.
        #: string: "ready" once the indexes below are complete; the build's position while they are being built
        self.index_state = f"{base}:index"
        #: sorted set (scores 0) of the held skus not known to be expired, for paging active items in sku order
        self.live = f"{base}:live"
        #: sorted set: the time-limited skus of `live`, scored by their expiry (ms)
        self.expiry = f"{base}:expiry"
        #: sorted set: every held time-limited sku, scored by -granted_at (ms): newest first, then by sku
        self.timed = f"{base}:timed"
        #: sorted set: every recurring subscription id, scored by -date_create (ms)
        self.subscriptions_order = f"{base}:subs_order"
        #: sorted set: the recurring subscriptions in force (active, non-renewing), scored as above
        self.subscriptions_active = f"{base}:subs_active"
        #: string: the player's version, one more for every sku a write changes (core.feed; 0 when absent)
        self.version = f"{base}:version"
        self.idempotency_prefix = f"{base}:idem:"
        self.order_prefix = f"{base}:order:"
        self.event_prefix = f"{base}:evt:"
        self.follow_prefix = f"{base}:order-follow:"
        self.upstream_prefix = f"{base}:order-upstream:"

    @property
    def indexes(self) -> list[str]:
        """The keys `server/lua/index.lua` reads, in its order: always the last ones of a script's KEYS."""
        return [
            self.index_state,
            self.items,
            self.subscriptions,
            self.skus,
            self.live,
            self.expiry,
            self.timed,
            self.subscriptions_order,
            self.subscriptions_active,
        ]

    def idempotency(self, key: str) -> str:
        """The key remembering one idempotency key's request fingerprint and response."""
        return self.idempotency_prefix + key

    def order(self, order_id: str) -> str:
        """Hash: one order's status and the grants it made (so a cancel can undo exactly those)."""
        return self.order_prefix + order_id

    def order_follow(self, order_id: str) -> str:
        """String with a TTL: the lease of the replica that follows the order at the provider for its streams (its
        holder id; `server.tracking.upstream`). In the player's slot, as the order hash: the lease is per (project,
        player, order), as trackers are, so statuses read with one player's token reach only that player's
        streams, and the leases of many orders spread over the cluster instead of loading one project's node."""
        return self.follow_prefix + order_id

    def order_upstream(self, order_id: str) -> str:
        """Hash with a TTL (`rank`, `message`): the furthest status the provider reported for the order to the
        replica following it there (`server.status_channel.UpstreamRecords`), read by a replica that starts
        following it or subscribes again."""
        return self.upstream_prefix + order_id

    def applied_event(self, event_id: str) -> str:
        """String with a TTL: marks a provider event (transaction, subscription) as applied to this player.

        Kept apart from `idempotency` so a game server's idempotency key can never collide with an event id.
        """
        return self.event_prefix + event_id


class EventKeys:
    """The keys of one partition of one project's event log. They share the hash tag `{ev:<project>:<partition>}`,
    so the dedup check and the XADD run in one atomic script on Redis Cluster too."""

    __slots__ = ("dead_letters", "dedup_prefix", "partition", "project_id", "stream", "tag")

    def __init__(self, project_id: int, partition: int) -> None:
        self.project_id = int(project_id)
        self.partition = int(partition)
        self.tag = "{ev:" + str(self.project_id) + ":" + str(self.partition) + "}"
        base = f"{PREFIX}:{self.tag}"
        #: stream of accepted notifications (fields: event, raw, type)
        self.stream = f"{base}:events"
        #: stream of entries that kept failing, moved aside after N deliveries
        self.dead_letters = f"{base}:dead"
        self.dedup_prefix = f"{base}:dedup:"

    def dedup(self, event_id: str) -> str:
        """The key marking an event id as already stored."""
        return self.dedup_prefix + event_id


#: The consumer group every service replica joins on each event stream.
CONSUMER_GROUP = "entitlements"


def order_status_channel(project_id: int) -> str:
    """The pub/sub channel on which every applied order event of a project announces the order's new status (see
    `server.status_channel`). On Redis Cluster it is a sharded channel (SPUBLISH/SSUBSCRIBE), served by the node
    owning its slot."""
    return f"{PREFIX}:{{p:{int(project_id)}}}:order-status"


def catalog_key(project_id: int) -> str:
    """String: the last catalog read from the project's provider, JSON with when it was read
    (`server.catalog.Catalog.to_json`), so that a restart without the provider still knows it."""
    return f"{PREFIX}:{{p:{project_id}}}:catalog"


def order_players_key(project_id: int) -> str:
    """Hash: order id -> whom the order belongs to, as this service learned it (`server.reconcile.index`):
    "w:<player>" from a signed webhook or the provider's own record (authoritative), "s:<player>" from a
    GetOrderStatus stream the provider confirmed (a claim), "x" when claims disagree (never guessed)."""
    return f"{PREFIX}:{{p:{int(project_id)}}}:order-players"


def known_orders_key(project_id: int) -> str:
    """Sorted set: the orders in `order_players_key`, scored by when this service first learned of them (ms), so
    entries past the retention are trimmed from both."""
    return f"{PREFIX}:{{p:{int(project_id)}}}:orders"


def applied_orders_key(project_id: int) -> str:
    """Sorted set: the orders whose order_paid this service applied, scored by when it first did (ms), so the
    sweeper can find orders applied here that the provider does not know."""
    return f"{PREFIX}:{{p:{int(project_id)}}}:applied-orders"


def sweeper_lease_key(project_id: int) -> str:
    """String: the holder id of the lease that lets one replica sweep the project's orders at the provider
    (`server.reconcile.lease`); expires unless its holder renews it."""
    return f"{PREFIX}:{{p:{int(project_id)}}}:sweeper"


def sweep_progress_key(project_id: int) -> str:
    """Hash: the project's sweep progress (`server.reconcile.progress`): the window being swept and the next
    offset, the watermark, when the last sweep succeeded, the last error, when the next sweep is due."""
    return f"{PREFIX}:{{p:{int(project_id)}}}:sweep"


def sweep_seen_key(project_id: int) -> str:
    """Sorted set: the orders the provider's search returned, scored by their creation (ms), so an order applied
    here that no sweep ever saw is reported; trimmed with the order index."""
    return f"{PREFIX}:{{p:{int(project_id)}}}:sweep-seen"


def reconcile_reports_key(project_id: int) -> str:
    """Hash: order id -> what the sweeper reported about it and could not settle (unresolved: nobody says whose it
    is; mismatch: this service and the provider disagree; failed: it could not be applied), JSON; the operator's
    list (`python -m server reconcile status`)."""
    return f"{PREFIX}:{{p:{int(project_id)}}}:reconcile-reports"


def sweep_pending_key(project_id: int) -> str:
    """Sorted set: the orders a sweep saw unfinished (new at the provider), scored by their creation (ms), searched
    again by later sweeps once the window has moved past them (`server.reconcile.recheck`); forgotten once
    finished, or past `ENTITLEMENTS_RECONCILE_PENDING_H`."""
    return f"{PREFIX}:{{p:{int(project_id)}}}:sweep-pending"


def sweep_rechecked_key(project_id: int) -> str:
    """Sorted set: creation seconds (ms) searched again by a sweep's re-check, scored by when they last were, so
    each is searched again only once its cadence has passed (`server.reconcile.recheck`)."""
    return f"{PREFIX}:{{p:{int(project_id)}}}:sweep-rechecked"
