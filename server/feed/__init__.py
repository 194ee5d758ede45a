"""The change feed's write side: every committed change to a player's entitlements reaches the project's feed
(`core.feed`), which WatchEntitlements serves.

- `relay`: `FeedRelay`, the intents the store's writes record and the batched relay after them; `ledger_changes`,
  a player's changes read back from its ledger.
- `repair`: `FeedRepair`, which relays what a failed or lost relay left pending, and trims the feed.
- `settings`: `FeedSettings` (`ENTITLEMENTS_FEED_RETENTION_S`, `ENTITLEMENTS_FEED_REPAIR_S`).
- `writer`: `FeedWriter`, both as one part of the service process.
"""

from server.feed.relay import FeedRelay, Intent, ledger_change, ledger_changes
from server.feed.repair import FeedRepair
from server.feed.settings import FeedSettings
from server.feed.writer import FeedWriter

__all__ = ["FeedRelay", "FeedRepair", "FeedSettings", "FeedWriter", "Intent", "ledger_change", "ledger_changes"]
