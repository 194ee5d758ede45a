"""Announcing an order's status change: the channels it can go out on, and what one announcement did."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from xsolla_simulator.errors import InvalidRequest
from xsolla_simulator.streams import Publication
from xsolla_simulator.webhooks import WebhookDelivery

#: The channels a status change can be announced on (all of them by default).
CHANNELS: Final = ("websocket", "webhook", "polling")


@dataclass(frozen=True)
class Announcement:
    """How a status change was announced.

    Attributes:
        channels: the channels that announced it (those asked for, minus silenced ones).
        publication: the WebSocket publication, when `websocket` announced it.
        sockets: how many WebSocket sessions the publication was written to.
        webhook: the first delivery attempt of the webhook, when one was sent.
    """

    order_id: int
    status: str
    channels: tuple[str, ...]
    publication: Publication | None = None
    sockets: int = 0
    webhook: WebhookDelivery | None = None


def check_channels(channels: Iterable[str]) -> tuple[str, ...]:
    """The channels named, as a tuple.

    Raises:
        InvalidRequest: one is not in `CHANNELS`.
    """
    if isinstance(channels, str):  # a lone "websocket" would otherwise read as its letters
        channels = (channels,)
    chosen = tuple(channels)
    unknown = [channel for channel in chosen if channel not in CHANNELS]
    if unknown:
        raise InvalidRequest(f"unknown channels {unknown}; choose from {', '.join(CHANNELS)}")
    return chosen
