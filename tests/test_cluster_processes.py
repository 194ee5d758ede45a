"""Several processes on one Redis Cluster: 2 service replicas and 2 gateways, as deployed (`python -m server`,
`python -m webhook_gateway`, `REDIS_CLUSTER=true`, 6 event partitions spread over the 3 primaries).

The traffic and the judging are the failover benchmark's (`bench.failover`, `bench.traffic`, `bench.outcome`),
without the kill: every order delivered twice at once through both gateways, Grant calls through both replicas
with some replayed on the other, checks through both, GetOrderStatus streams on both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.failover import FIRST_ORDER, Scenario, run_scenario
from bench.outcome import judge
from bench.servers import BENCH_PROJECT
from bench.stack import StackSettings
from bench.traffic import GEM, Order, player_of
from core.keys import UserKeys
from tests.helpers.stores import SELECTED_KINDS, client_for
from tools.cluster import LocalCluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif("cluster" not in SELECTED_KINDS, reason="ENTITLEMENTS_TEST_STORES leaves the cluster out"),
]

ORDERS, GRANTS, PLAYERS = 300, 200, 60


@pytest.mark.timeout(240)
async def test_two_services_and_two_gateways_on_a_cluster_lose_nothing_and_double_nothing(
    shared_cluster: LocalCluster, tmp_path: Path
) -> None:
    """300 orders each delivered twice through 2 gateways, 200 grants through 2 replicas (a quarter replayed on the
    other), checks and streams on both: every order applied once, every grant once, every quantity exact on both
    replicas, every stream done, no answer but success or a retryable one."""
    shared_cluster.flush()
    scenario = Scenario(kill=False, orders=ORDERS, grants=GRANTS, players=PLAYERS, give_up_s=60.0)
    result = await run_scenario(shared_cluster, tmp_path / "processes", StackSettings(), scenario)

    outcome = result.outcome
    assert outcome.exact, outcome.problems
    assert (outcome.acknowledged, outcome.applied, outcome.lost, outcome.doubled) == (ORDERS, ORDERS, 0, 0)
    assert (outcome.grants_ok, outcome.grants_present) == (GRANTS, GRANTS)
    assert result.answers["webhook"]["204"] == 2 * ORDERS  # each copy acknowledged once
    assert result.answers["grant"]["replayed"] >= GRANTS // 4  # the replays on the other replica, and retries
    assert result.bad_replays == 0
    assert result.unexpected == {}
    assert result.given_up == {"webhooks": 0, "grants": 0}
    assert result.streams["done"] == result.streams["streams"] == 2 * scenario.streamed_orders, result.streams
    assert "repeated" not in result.streams["errors"], result.streams
    assert result.exited == []
    assert sum(result.traceback_lines.values()) == 0, result.first_tracebacks


async def test_the_judge_sees_an_order_lost_and_a_line_doubled(shared_cluster: LocalCluster) -> None:
    """The judging reads the store: an acknowledged order whose record is missing is lost, an order line with two
    ledger entries is doubled (so the figures above can fail)."""
    shared_cluster.flush()
    redis = client_for(shared_cluster.url, cluster=True)
    try:
        kept, missing = Order(FIRST_ORDER, player_of(0, PLAYERS)), Order(FIRST_ORDER + 1, player_of(1, PLAYERS))
        keys = UserKeys(BENCH_PROJECT, kept.player)
        await redis.hset(keys.order(str(kept.number)), mapping={"status": "paid", "granted": "1"})
        for _ in range(2):
            await redis.xadd(keys.ledger, {"op": "grant", "order_id": str(kept.number), "sku": GEM})
        orders = [kept, missing]
        judged = await judge(redis, BENCH_PROJECT, sent=orders, acknowledged=orders, grants=[], clients=[])
    finally:
        await redis.aclose()
    assert (judged.acknowledged, judged.applied, judged.lost, judged.doubled) == (2, 1, 1, 1)
    assert judged.quantities_short > 0  # the ledger says granted, the items hash holds nothing
    assert not judged.exact
