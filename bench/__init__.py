"""Benchmarks of the entitlement service on this machine, each against a baseline measured in the same run.

`python -m bench` (or `make bench`) runs them all with one core placement (the server under test alone on one
core, everything else on another) and prints the tables: the gRPC service against a bare grpc.aio server, the
webhook gateway against a bare aiohttp handler, the consumer against direct application, GetOrderStatus streams
(open time, memory, idle CPU) and the latency from a webhook to the streams. See `docs/benchmarks.md` for the
method and the figures of a reference run. Nothing here is part of the test suite, except that the failover run's
scenario (`failover`, `stack`, `traffic`, `outcome`) is also what tests/test_cluster_processes.py and
tests/test_cluster_failover.py run.

Modules:
    rpcs        the gRPC part: the service against the bare server, scenario by scenario
    bare        the baseline: the same gRPC service answering fixed responses, no Redis, no auth
    gateway     webhook ingest: the gateway against a bare aiohttp handler (and its load processes)
    consumer    webhook events applied per second by the service's consumer
    streams     GetOrderStatus streams held by one service process: open time, memory, idle CPU
    latency     from a webhook's 204 to the update on every stream watching its order
    watchers    client processes holding GetOrderStatus streams, recording every message's arrival
    servers     starting the service and the bare server on the server core
    cores       pinning, and how busy each core was during a measured window
    usage       a process's resident memory and CPU time, from /proc
    processes   child processes pinned to a core, in their own process group, always cleaned up
    h2load      the h2load driver: pre-encoded gRPC frames, percentiles from its per-request log
    loadgen     the multi-process grpc.aio load generator (distinct idempotency keys for Grant)
    dataset     the players and items written before the runs
    counters    the service's own RPC counters and gauges, read from its Prometheus endpoint
    report      result records, the tables and the JSON file
    profiling   optional py-spy sampling of the service under load (`--profile`)
    failover    a Redis Cluster primary killed under load: lost, doubled, seconds refused (also run by the tests)
    stack       service replicas and gateways as processes on one Redis Cluster
    traffic     the failover run's callers: webhooks, grants, checks, order streams, each with its retries
    outcome     what the store holds at the end against what the callers were told
"""
