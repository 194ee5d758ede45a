"""Moving one hash slot of a `tools.cluster.LocalCluster` to another primary, as `valkey-cli --cluster reshard`
does for each slot: the target imports it, the owner migrates it, its keys are moved with MIGRATE, then every
primary is told the slot's new owner (the replicas learn it from them)."""

from __future__ import annotations

from redis.exceptions import RedisError

from tools.cluster import LocalCluster, Node


def node_id(node: Node) -> str:
    """The node's cluster id."""
    with node.client() as client:
        raw = client.execute_command("CLUSTER", "MYID")
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def move_slot(cluster: LocalCluster, slot: int, target: Node) -> Node:
    """Moves `slot`, with its keys, to the primary `target`; returns the node that owned it. Blocking: call it with
    `asyncio.to_thread` from a test's event loop.

    Raises:
        ValueError: `target` owns the slot already.
    """
    source = next(node for node in cluster.nodes if node.port == cluster.slot_owner(slot))
    if source is target:
        raise ValueError(f"{target.address} owns slot {slot} already")
    source_id, target_id = node_id(source), node_id(target)
    with target.client() as importing, source.client() as migrating:
        importing.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        migrating.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := migrating.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            host, port = target.address.rsplit(":", 1)
            migrating.execute_command("MIGRATE", host, int(port), "", 0, 5000, "KEYS", *keys)
    # The target first (it must own the slot before the source gives it up), then every other primary.
    for node in [target, source, *(n for n in cluster.primaries() if n not in (target, source))]:
        with node.client() as client:
            try:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            except RedisError as exc:  # a primary that learned it by gossip already
                if "already" not in str(exc).lower():
                    raise
    return source
