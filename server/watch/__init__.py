"""WatchEntitlements: a project's entitlement changes, streamed from the change feed (`core.feed`) to game servers'
caches, with resumable cursors and player snapshots. See docs/WATCH.md.

- `cursor`: the opaque position a stream resumes from.
- `requests`: the caller's messages, validated.
- `history`: reads of the feed besides the tail (feed id, cursor checks, catch-up) and players' snapshots.
- `tail`: one shared reader of a project's feed per replica, fanned out to the streams.
- `stream`: one stream: snapshots, catch-up, changes, heartbeats.
- `watches`: the replica's streams (`Watches`): admission, tails, shutdown.
- `settings`: `WatchSettings`, read with the service's others (`server.config`).
"""

from server.watch.watches import Watches

__all__ = ["Watches"]
