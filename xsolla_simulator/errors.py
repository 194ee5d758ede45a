"""What the simulator's control API raises.

    SimulatorError
     ├── UnknownOrder      (also a LookupError) no order has that id
     ├── UnknownToken      (also a LookupError) the token was never issued, or was revoked
     ├── UnknownSubscription (also a LookupError) no subscription has that id
     └── InvalidRequest    (also a ValueError) a status, channel, item or argument the simulator cannot act on

Only the control API raises: the simulated protocols answer their peers the way Xsolla does (a Store API error
body, a Centrifuge reply error or close code), never with an exception.
"""

from __future__ import annotations


class SimulatorError(Exception):
    """Base class of every error the simulator's control API raises."""


class UnknownOrder(SimulatorError, LookupError):
    """No order with that id was created on this simulator."""

    def __init__(self, order_id: int) -> None:
        super().__init__(f"no order {order_id} on this simulator")
        self.order_id = order_id


class UnknownToken(SimulatorError, LookupError):
    """The token was not issued by this simulator, or was revoked."""


class InvalidRequest(SimulatorError, ValueError):
    """An argument the simulator cannot act on (unknown status, channel or project, malformed item, bad count)."""


class UnknownSubscription(SimulatorError, LookupError):
    """No subscription with that id was created on this simulator."""

    def __init__(self, subscription_id: str) -> None:
        super().__init__(f"no subscription {subscription_id!r} on this simulator")
        self.subscription_id = subscription_id
