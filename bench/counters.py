"""The service's own count of answered RPCs, read from its Prometheus endpoint.

h2load counts an HTTP 200 as a success, but gRPC sends its status in the trailers of a 200 response, so a
flood of UNAVAILABLE answers looks like a fast, healthy run to h2load. Reading
`entitlements_rpc_requests_total{method,code}` before and after each run tells how many calls the service
really answered OK.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

RPC_COUNTER = "entitlements_rpc_requests"  # the family name, without the `_total` suffix

Counts = dict[tuple[str, str], float]


def read(metrics_url: str, timeout_s: float = 5.0) -> Counts:
    """Returns the RPC counter's current values, by (method, code)."""
    with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:  # noqa: S310 - our own http URL
        text = response.read().decode()
    counts: Counts = {}
    for family in text_string_to_metric_families(text):
        if family.name != RPC_COUNTER:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                counts[(sample.labels["method"], sample.labels["code"])] = sample.value
    return counts


def increase(before: Counts, after: Counts, method: str) -> Mapping[str, int]:
    """The calls of `method` answered between two readings, by gRPC code name (codes with none left out)."""
    codes = {code for (name, code) in after if name == method}
    result = {code: int(after.get((method, code), 0) - before.get((method, code), 0)) for code in codes}
    return {code: n for code, n in sorted(result.items()) if n}


def gauge(metrics_url: str, name: str, timeout_s: float = 5.0) -> float:
    """The current value of an unlabelled gauge (e.g. `entitlements_order_watchers`); NaN when absent."""
    with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:  # noqa: S310 - our own http URL
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    return float("nan")
