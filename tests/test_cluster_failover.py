"""A primary of the Redis Cluster killed (SIGKILL) under load, with 2 service replicas and 2 gateways running on it
as processes (`GATEWAY_DURABILITY=replicas`): the callers see UNAVAILABLE / 503 for a while, every process
recovers by itself, and nothing acknowledged is lost or applied twice.

The scenario is the failover benchmark's (`bench.failover`): webhooks (each order twice at once through both
gateways, every copy sent again until a 204, as Xsolla retries), Grant calls retried with their idempotency key,
checks, and GetOrderStatus streams on both replicas, some opened just before the kill. The primary killed holds
event partitions and a third of the players' slots (and the order-status channel when it holds a partition too).
Figures are printed (`pytest -s`); the bounds on time are generous on purpose.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.failover import FailoverResult, Scenario, run_scenario, summary
from bench.stack import StackSettings
from tests.helpers.stores import SELECTED_KINDS
from tools.cluster import LocalCluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif("cluster" not in SELECTED_KINDS, reason="ENTITLEMENTS_TEST_STORES leaves the cluster out"),
]

#: Past this a recovery is a failure, not a slow machine (a failover takes about 3 s here).
RECOVERY_BOUND_S = 30.0


def cluster_of(base: Path, replicas: int) -> Iterator[LocalCluster]:
    cluster = LocalCluster(base, replicas=replicas)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def two_replica_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of the test's own: 3 primaries with 2 replicas each (a promoted replica still has one)."""
    yield from cluster_of(tmp_path / "cluster", replicas=2)


@pytest.fixture
def one_replica_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of the test's own: 3 primaries with 1 replica each (a promoted replica has none)."""
    yield from cluster_of(tmp_path / "cluster", replicas=1)


def assert_nothing_lost_or_doubled(result: FailoverResult) -> None:
    """Every acknowledged webhook applied once, every granted key once, quantities exact on both replicas, every
    stream done without a repeated status, only successes and retryable answers, no process down, no traceback in
    any log."""
    print(summary(result))  # the figures, for `pytest -s`
    outcome = result.outcome
    assert outcome.exact, outcome.problems
    assert outcome.lost == outcome.doubled == outcome.grants_lost == outcome.grants_doubled == 0
    assert outcome.applied >= outcome.acknowledged > 0
    assert result.bad_replays == 0
    assert result.unexpected == {}
    assert result.given_up == {"webhooks": 0, "grants": 0}
    assert result.streams["done"] == result.streams["streams"], result.streams
    assert "repeated" not in result.streams["errors"], result.streams
    assert result.exited == []
    assert sum(result.traceback_lines.values()) == 0, result.first_tracebacks


@pytest.mark.timeout(300)
async def test_a_primary_killed_under_load_loses_nothing_and_every_caller_recovers(
    two_replica_cluster: LocalCluster, tmp_path: Path
) -> None:
    """Kill the primary of an event partition during a webhook burst and a grant load: its replica is promoted,
    webhooks get 503 and calls UNAVAILABLE for a bounded time, every kind of caller succeeds again without a
    process restarted, and every 204 and every OK grant is in the store exactly once."""
    result = await run_scenario(two_replica_cluster, tmp_path / "processes", StackSettings(), Scenario(give_up_s=90.0))
    assert_nothing_lost_or_doubled(result)
    assert result.killed is not None
    assert result.killed["partitions"]
    assert result.outages["webhook"]["failures"] > 0  # the kill did hit the webhooks on its partitions
    for kind, figures in result.outages.items():
        assert figures["recovered_after_s"] is not None, kind
        assert figures["recovered_after_s"] < RECOVERY_BOUND_S, (kind, figures)


@pytest.mark.timeout(300)
async def test_with_one_replica_the_promoted_shard_answers_503_until_a_replica_is_back(
    one_replica_cluster: LocalCluster, tmp_path: Path
) -> None:
    """With one replica per primary, the promoted replica has none left: waiting for a replica, the webhooks of its
    partitions are answered 503 (never a 204 that one more crash could lose) until the killed node, started again,
    rejoins as its replica; then they are acknowledged, and nothing is lost or doubled."""
    scenario = Scenario(restart_killed_after_s=5.0, give_up_s=90.0)
    result = await run_scenario(one_replica_cluster, tmp_path / "processes", StackSettings(), scenario)
    assert_nothing_lost_or_doubled(result)
    assert result.killed is not None
    webhooks = result.outages["webhook"]
    # 503s went on past the promotion, until the node was back (not merely during the failover).
    assert webhooks["recovered_after_s"] is not None
    assert webhooks["recovered_after_s"] > result.killed["restarted_after_s"], (webhooks, result.killed)
    assert webhooks["recovered_after_s"] < result.killed["restarted_after_s"] + RECOVERY_BOUND_S
