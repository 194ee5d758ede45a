"""The baseline server: EntitlementService on grpc.aio with handlers that answer a fixed response.

GetOrderStatus sends one fixed update and holds the stream open until the caller cancels it.

It is the floor of what any grpc.aio service can do on this machine: the same service name, the same request
and response messages, the same server options as the real service, but no authentication, no validation, no
Redis, no log line and no metrics. Dividing the real service's figures by this server's shows what the
service's own work costs, independently of how fast the machine or gRPC's Python binding is.

Run as `python -m bench.bare --port 0`; it prints `PORT <n>` on stdout once it serves, and exits on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from entitlements.v1 import entitlements_pb2 as pb
from entitlements.v1 import entitlements_pb2_grpc as pb_grpc
from server.config import Settings
from server.rpc import grpc_server_options

Context = grpc.aio.ServicerContext[Any, Any]

# About what the real service answers for a held consumable: same fields set, similar sizes.
_NOW = Timestamp(seconds=1_767_225_600, nanos=123_000_000)
_ENTITLEMENT = pb.Entitlement(
    user_id="bench-user-00000",
    sku="bench-gold",
    kind=pb.ENTITLEMENT_KIND_CONSUMABLE,
    quantity=3,
    granted_at=_NOW,
    updated_at=_NOW,
    active=True,
)
CHECK_RESPONSE = pb.CheckEntitlementResponse(active=True, entitlement=_ENTITLEMENT)
GRANT_RESPONSE = pb.GrantResponse(entitlement=_ENTITLEMENT, replayed=False)
#: CheckEntitlements' answer to the benchmark's 100 pairs (`bench.dataset.batch_check_request`).
BATCH_CHECK_RESPONSE = pb.CheckEntitlementsResponse(results=[CHECK_RESPONSE] * 100)


class BareServicer(pb_grpc.EntitlementServiceServicer):
    """Answers CheckEntitlement, CheckEntitlements (100 results) and Grant with a fixed response and holds
    GetOrderStatus streams; the other RPCs answer UNIMPLEMENTED."""

    async def CheckEntitlement(
        self, request: pb.CheckEntitlementRequest, context: Context
    ) -> pb.CheckEntitlementResponse:
        return CHECK_RESPONSE

    async def Grant(self, request: pb.GrantRequest, context: Context) -> pb.GrantResponse:
        return GRANT_RESPONSE

    async def Revoke(self, request: pb.RevokeRequest, context: Context) -> pb.RevokeResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the benchmark")

    async def ListEntitlements(
        self, request: pb.ListEntitlementsRequest, context: Context
    ) -> pb.ListEntitlementsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the benchmark")

    async def ListSubscriptions(
        self, request: pb.ListSubscriptionsRequest, context: Context
    ) -> pb.ListSubscriptionsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the benchmark")

    async def ListLedger(self, request: pb.ListLedgerRequest, context: Context) -> pb.ListLedgerResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the benchmark")

    async def CheckEntitlements(
        self, request: pb.CheckEntitlementsRequest, context: Context
    ) -> pb.CheckEntitlementsResponse:
        return BATCH_CHECK_RESPONSE

    async def WatchEntitlements(
        self, requests: AsyncIterator[pb.WatchEntitlementsRequest], context: Context
    ) -> AsyncIterator[pb.WatchEntitlementsResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the benchmark")
        yield pb.WatchEntitlementsResponse()

    async def GetOrderStatus(
        self, request: pb.GetOrderStatusRequest, context: Context
    ) -> AsyncIterator[pb.OrderStatusUpdate]:
        """Sends one fixed update (the order paid, from the store), then holds the stream until the caller
        cancels it: the floor of a held GetOrderStatus stream."""
        yield pb.OrderStatusUpdate(
            order_id=request.order_id, status=pb.ORDER_STATUS_PAID, source=pb.ORDER_STATUS_SOURCE_STORED
        )
        await asyncio.get_running_loop().create_future()


async def serve(host: str, port: int) -> None:
    """Serves until SIGTERM or SIGINT; prints the bound port first."""
    # The same options as the service (server.app), so the two servers differ only in what the handlers do.
    server = grpc.aio.server(options=grpc_server_options(Settings()))
    pb_grpc.add_EntitlementServiceServicer_to_server(BareServicer(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"PORT {bound}", flush=True)
    await stop.wait()
    await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
