"""The HTTP/JSON API's routes, built from the `google.api.http` rules, and the transcoding of a request, without a
server: path templates with variables and verbs, the rules it refuses at start, and query parameters."""

from __future__ import annotations

import json

import grpc
import pytest
from google.api import http_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from entitlements.v1 import entitlements_pb2 as pb
from server.http_api.errors import HttpError
from server.http_api.routes import Route, Router, RuleError, route_for, service_routes
from server.http_api.transcoding import request_message

SERVICE = pb.DESCRIPTOR.services_by_name["EntitlementService"]
METHODS = SERVICE.methods_by_name


def test_every_rpc_has_the_route_its_rule_names() -> None:
    """The routes come from the .proto: one per RPC that has a rule (WatchEntitlements, bidirectional, has none),
    with its method, path and body."""
    routes = {route.method.name: (route.http_method, route.template, route.body) for route in service_routes(SERVICE)}
    assert routes == {
        "Grant": ("POST", "/v1/entitlements:grant", "*"),
        "Revoke": ("POST", "/v1/entitlements:revoke", "*"),
        "CheckEntitlement": ("GET", "/v1/entitlements:check", ""),
        "CheckEntitlements": ("POST", "/v1/entitlements:batchCheck", "*"),
        "ListEntitlements": ("GET", "/v1/entitlements", ""),
        "ListSubscriptions": ("GET", "/v1/subscriptions", ""),
        "ListLedger": ("GET", "/v1/ledger", ""),
        "GetOrderStatus": ("POST", "/v1/orders:status", "*"),
    }
    assert [m.name for m in SERVICE.methods if not m.client_streaming] == list(routes)


def route(method: str, **rule: object) -> Route:
    return route_for(METHODS[method], http_pb2.HttpRule(**rule))


def grant_request(route: Route, query: list[tuple[str, str]], body: bytes, **path: str) -> pb.GrantRequest:
    """`request_message` for a route of Grant: the generated GrantRequest itself."""
    values = {fields: path[fields[-1].name] for _, fields in route.variables}
    message = request_message(route, values, query, body)
    assert isinstance(message, pb.GrantRequest)
    return message


def test_path_variables_and_verbs() -> None:
    """`{field}` binds one percent-decoded segment, `{field=a/*}` a pattern, `**` the rest; the verb must match."""
    check = route("CheckEntitlement", get="/v1/players/{user_id}/items/{sku}:check")
    assert [f.name for _, path in check.variables for f in path] == ["user_id", "sku"]
    values = check.match("/v1/players/a%2Fb%20c/items/gold:check")
    assert values is not None
    assert sorted(values.values()) == ["a/b c", "gold"]
    assert check.match("/v1/players/a/items/gold") is None
    assert check.match("/v1/players/a/items/gold:grant") is None
    assert check.match("/v1/players/a/b/items/gold:check") is None
    message = request_message(check, values, [("projectId", "7")], b"")
    assert message == pb.CheckEntitlementRequest(user_id="a/b c", sku="gold", project_id=7)

    nested = route("CheckEntitlement", get="/v1/{user_id=players/*}/{sku=**}")
    values = nested.match("/v1/players/p1/skins/red/large")
    assert values is not None
    assert sorted(values.values()) == ["players/p1", "skins/red/large"]
    assert nested.match("/v1/teams/p1/x") is None


@pytest.mark.parametrize(
    ("method", "rule", "problem"),
    [
        ("Grant", {"post": "/v1/grant", "body": "*", "response_body": "entitlement"}, "response_body"),
        ("CheckEntitlement", {"get": "/v1/check", "body": "*"}, "cannot have a body"),
        ("Grant", {"post": "/v1/grant", "body": "gift"}, "body 'gift' is not a field"),
        ("CheckEntitlement", {"get": "/v1/{player}"}, "has no field 'player'"),
        ("Grant", {"post": "/v1/{metadata}", "body": "*"}, "is repeated"),
        ("Grant", {"post": "/v1/{duration}", "body": "*"}, "is a message"),
        ("CheckEntitlement", {"get": "/v1/{user_id=**}/x"}, "must be the last segment"),
        ("CheckEntitlement", {"get": "v1/check"}, "must start with '/'"),
        ("CheckEntitlement", {"get": "/v1/{user_id"}, "unbalanced"),
        ("CheckEntitlement", {"get": "/v1//check"}, "empty segment"),
        ("CheckEntitlement", {"get": "/v1/check:"}, "verb"),
        ("CheckEntitlement", {"get": "/v1/{user_id}/{user_id}"}, "bound twice"),
        ("CheckEntitlement", {"get": "/v1/a{user_id}"}, "whole segment"),
        ("Grant", {"post": "/v1/{user_id}", "body": "user_id"}, "both the body and a path variable"),
        ("CheckEntitlement", {}, "no pattern"),
    ],
)
def test_rules_that_cannot_be_served_stop_the_start(method: str, rule: dict[str, object], problem: str) -> None:
    """A rule this API does not support is refused at start with what is wrong, never served half right."""
    with pytest.raises(RuleError, match=problem):
        route(method, **rule)


def test_a_custom_method_and_a_single_field_body() -> None:
    """`custom` names any HTTP method; `body: "<field>"` is that field's JSON, the rest from the query."""
    grant = route("Grant", custom=http_pb2.CustomHttpPattern(kind="link", path="/v1/grants"), body="duration")
    assert grant.http_method == "LINK"
    message = grant_request(grant, [("user_id", "p"), ("sku", "s")], b'"3.5s"')
    assert (message.user_id, message.sku) == ("p", "s")
    assert message.duration.ToMilliseconds() == 3500
    for query, problem in [
        ([("duration", "1s")], "set by the path or the body"),
        ([("duration.seconds", "3")], "has no such field"),
    ]:
        with pytest.raises(HttpError, match=problem):
            request_message(grant, {}, query, b'"1s"')


def test_query_parameters_for_maps_and_messages_are_refused() -> None:
    """Maps have no query form; a message field must be named down to a scalar."""
    get = route("Grant", get="/v1/grants")
    with pytest.raises(HttpError, match="map fields cannot be query parameters"):
        request_message(get, {}, [("metadata", "a")], b"")
    message = grant_request(get, [("kind", "ENTITLEMENT_KIND_PERMANENT"), ("quantity", "3")], b"")
    assert (message.kind, message.quantity) == (pb.ENTITLEMENT_KIND_PERMANENT, 3)


def test_a_path_value_the_body_contradicts_is_refused() -> None:
    """With `body: "*"` and a path variable, the body may repeat the value but not change it."""
    grant = route("Grant", post="/v1/players/{user_id}:grant", body="*")
    values = grant.match("/v1/players/p1:grant")
    assert values is not None
    assert grant_request(grant, [], b'{"userId": "p1", "sku": "s"}', user_id="p1").user_id == "p1"
    with pytest.raises(HttpError, match="'p1' in the path but 'p2' in the body"):
        request_message(grant, values, [], b'{"userId": "p2"}')


def test_the_router_tells_an_unknown_path_from_a_wrong_method() -> None:
    """No route for the path: 404 NOT_FOUND; a route for another method: 405 UNIMPLEMENTED with Allow."""
    router = Router(service_routes(SERVICE))
    found, _ = router.resolve("GET", "/v1/ledger")
    assert found.method.name == "ListLedger"
    with pytest.raises(HttpError) as missing:
        router.resolve("GET", "/v1/ledgers")
    assert (missing.value.status, missing.value.code) == (404, grpc.StatusCode.NOT_FOUND)
    with pytest.raises(HttpError) as wrong:
        router.resolve("PUT", "/v1/entitlements:grant")
    assert (wrong.value.status, wrong.value.code) == (405, grpc.StatusCode.UNIMPLEMENTED)
    assert wrong.value.headers == {"Allow": "POST"}


ROUTES = service_routes(SERVICE)
_NAMES = sorted(
    {name for route in ROUTES for f in route.method.input_type.fields for name in (f.name, f.json_name)}
    | {"seconds", "nanos", "maxWait.seconds", "metadata.x", "duration.nanos"}
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_NAMES) | st.text(max_size=6), inner),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    route=st.sampled_from(ROUTES),
    body=st.dictionaries(st.sampled_from(_NAMES) | st.text(max_size=6), _JSON, max_size=6) | _JSON,
    query=st.lists(st.tuples(st.sampled_from(_NAMES) | st.text(max_size=6), st.text(max_size=12)), max_size=4),
)
def test_whatever_a_caller_sends_is_a_message_or_a_400(
    route: Route, body: object, query: list[tuple[str, str]]
) -> None:
    """Any JSON body and query string become the request message or a 400 INVALID_ARGUMENT, never another error."""
    raw = json.dumps(body).encode() if route.body else b""
    refused: HttpError | None = None
    try:
        message = request_message(route, {}, query if route.query else [], raw)
    except HttpError as exc:
        refused = exc
    if refused is not None:
        assert (refused.status, refused.code) == (400, grpc.StatusCode.INVALID_ARGUMENT)
    else:
        assert message.DESCRIPTOR is route.method.input_type
        message.SerializeToString()
