"""The HTTP/JSON API: every RPC of EntitlementService served as JSON over HTTP on the service's HTTP port, from the
`google.api.http` rules of the .proto (docs/HTTP_API.md).

It implements no RPC itself: each request is transcoded to the RPC's request message and sent to the service's
own gRPC server through a private unix socket (`server.grpc_api.PrivateSocket`), so that it goes through exactly
the authentication, validation, limits, metrics and status mapping of a gRPC call. GetOrderStatus answers as
Server-Sent Events.

Modules: `web` (the application, its error middleware, `HttpApi`), `routes` (the routes from the rules: path
templates, verbs, bodies), `transcoding` (path, query and JSON body to a request message; a response to JSON),
`upstream` (the channel to the gRPC server, metadata and deadline), `sse` (a stream as events), `errors` (the JSON
Status and the HTTP status of each gRPC code).
"""

from __future__ import annotations

from server.http_api.routes import Route, RuleError, service_routes
from server.http_api.web import HttpApi

__all__ = ["HttpApi", "Route", "RuleError", "service_routes"]
