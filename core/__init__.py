"""What the service and the webhook gateway share, and nothing else: neither process's package is imported here.

Modules:
    connections     the Redis client (`connect`, `RedisClient`) and `bounded`, the one wrapper that turns Redis
                    failures into `StoreUnavailable`
    keys            every Redis key, stream, group and channel name, with the hash tags
    eventlog        the event log: append (gateway), entry decoding (service), partitions, and its Lua
    scripts         the one Lua loader
    backoff         the one backoff policy (exponential, equal jitter)
    environ         typed reading of environment variables
    errors          the errors both processes raise: `ConfigError`, `StoreUnavailable`
    lifecycle       run until SIGTERM/SIGINT
    logs            structlog configuration and `user_ref`
    metrics         the Prometheus `/metrics` endpoint and the shared latency buckets
    webhooks        the seam to a payment provider's webhooks (what the gateway asks of a provider)
    order_sources   the seam to a payment provider's order status (what order tracking asks of a provider)
"""
