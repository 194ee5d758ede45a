"""The webhook event consumer: applies what the gateway appends to the event streams, each event once in effect.

How it runs (one `Consumer` per service process, started and stopped by `server.app.Service`):

- Every replica joins the consumer group `entitlements` of each partition's stream (`ent:{ev:<p>}:events`)
  under a name unique to its process (host:pid:random). One reader task per partition loops: claim entries
  other consumers left unacknowledged for `claim_idle_s` (XAUTOCLAIM), read new ones (XREADGROUP with BLOCK and
  COUNT), apply them as one batch (`server.fulfillment`: one pipeline and one durability wait per Redis node, a
  player's events in stream order), then XACK the batch's applied entries (one pipeline).
- An entry is acknowledged only after its effect is committed. A consumer that dies in between leaves it
  pending; another consumer (or this one, restarted) claims it and applies it again, and since every write is
  idempotent on the event id, that second application changes nothing.
- A failing entry stays pending and is retried when claimed. If it fails on its `max_deliveries`-th delivery it
  moves to the dead-letter stream, atomically with its XACK (`server.deadletters`). Redis being unreachable is
  not the entry's fault: the loop backs off (`core.backoff.Backoff`) and retries its own pending entries, and never
  dead-letters for that reason.
- Events of types this version does not apply are acknowledged and counted, never dead-lettered.
- The consumer does not create the streams: until the gateway's first append creates one, it checks again every
  `block_ms` (at most a second). It then creates its group at id 0, so events appended before any consumer
  started are applied.
- Every few seconds it updates the lag and pending gauges; every minute it trims acknowledged entries older than
  the retention and removes group members of processes gone for good (holding nothing pending).

Modules:

- `loop`: `Consumer`, the reader tasks (read, claim, and hand each batch on).
- `batches`: `BatchApplier`, one batch (decode, apply, acknowledge; retry or dead-letter what fails alone).
- `deliveries`: one delivery of an entry (`StreamEntry`), the test seams around applying it, which failures are
  transient, and the metrics and log line of an applied one.
- `upkeep`: `StreamUpkeep`, the gauges, retention trim and group membership, which `Consumer` runs.
- `projects`: `ProjectDirectory`, the projects registered since the start, and whether to read each (served, room).
"""

from server.consumer.deliveries import TRANSIENT_ERRORS, ConsumerHooks, Hook, StreamEntry, is_transient
from server.consumer.loop import (
    CLAIM_INTERVAL_MAX_S,
    DEFAULT_BACKOFF,
    JOIN_POLL_MAX_S,
    Consumer,
    default_consumer_name,
)
from server.consumer.upkeep import (
    HOUSEKEEPING_INTERVAL_S,
    RELEASE_TIMEOUT_S,
    STALE_CONSUMER_MS,
    StreamUpkeep,
    group_info,
)

__all__ = [
    "CLAIM_INTERVAL_MAX_S",
    "DEFAULT_BACKOFF",
    "HOUSEKEEPING_INTERVAL_S",
    "JOIN_POLL_MAX_S",
    "RELEASE_TIMEOUT_S",
    "STALE_CONSUMER_MS",
    "TRANSIENT_ERRORS",
    "Consumer",
    "ConsumerHooks",
    "Hook",
    "StreamEntry",
    "StreamUpkeep",
    "default_consumer_name",
    "group_info",
    "is_transient",
]
