"""The networks Xsolla sends webhooks from, for the gateway's optional allow-list (`GATEWAY_ALLOWED_NETWORKS`,
where the word `xsolla` stands for this list)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

#: The networks Xsolla publishes for its webhook senders (official PHP SDK's list, which extends the one on
#: developers.xsolla.com/webhooks/overview with 185.30.22.0/24 and the single Web Shop addresses).
XSOLLA_NETWORKS = (
    "185.30.20.0/24",
    "185.30.21.0/24",
    "185.30.22.0/24",
    "185.30.23.0/24",
    "34.102.38.178/32",
    "34.94.43.207/32",
    "35.236.73.234/32",
    "34.94.69.44/32",
    "34.102.22.197/32",
)

#: The names an allow-list may use for Xsolla's networks (`GatewaySettings.from_env(named_networks=...)`).
NAMED_NETWORKS: Mapping[str, tuple[str, ...]] = MappingProxyType({"xsolla": XSOLLA_NETWORKS})
