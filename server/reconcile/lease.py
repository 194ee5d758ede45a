"""The sweeper's lease: at most one replica sweeps a project's orders at the provider at a time.

A `server.leases.Lease` on `core.keys.sweeper_lease_key`: taken with SET NX PX, renewed every third of its length,
released when the sweep ends, lost (`LeaseLost`: the sweep stops at once) when another replica took it or a
renewal was not confirmed in time. The sweep's progress is saved only while the lease is held
(`server.reconcile.progress`), so a holder that lost it cannot move the progress of the one that took over.
"""

from __future__ import annotations

from core.connections import RedisClient
from core.keys import sweeper_lease_key
from server.leases import RENEWALS_PER_LEASE, Lease, LeaseLost

__all__ = ["RENEWALS_PER_LEASE", "LeaseLost", "SweeperLease"]


class SweeperLease(Lease):
    """One replica's claim on one project's sweeper lease.

    Args:
        redis: a connected client, owned by the caller.
        project_id: the project whose sweeps the lease guards.
        lease_s: how long the lease lasts unless renewed (a crashed holder's is free after this long).
        timeout_s: upper bound of one Redis call, retries included.
    """

    def __init__(self, redis: RedisClient, project_id: int, *, lease_s: float, timeout_s: float) -> None:
        super().__init__(redis, sweeper_lease_key(project_id), lease_s=lease_s, timeout_s=timeout_s, name="sweeper")
