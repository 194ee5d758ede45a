"""Throughput and latency of the entitlement service against a bare grpc.aio server, on this machine.

`python -m bench` (or `make bench`) starts both servers on one core and drives them from the other, then
prints each figure of the service next to the bare server's and their ratio. See `docs/benchmarks.md` for the
method and the figures of a reference run. Nothing here is part of the test suite.

Modules:
    bare        the baseline: the same gRPC service answering fixed responses, no Redis, no auth
    servers     starting the service and the bare server on the server core
    cores       pinning, and how busy each core was during a measured window
    processes   child processes pinned to a core, in their own process group, always cleaned up
    h2load      the h2load driver: pre-encoded gRPC frames, percentiles from its per-request log
    loadgen     the multi-process grpc.aio load generator (distinct idempotency keys for Grant)
    dataset     the players and items written before the runs
    counters    the service's own RPC counters, read from its Prometheus endpoint
    report      result records, the table and the JSON file
    profiling   optional py-spy sampling of the service under load (`--profile`)
"""
