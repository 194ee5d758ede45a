"""The HTTP/JSON API on the real service (real Valkey, single server and cluster): every RPC answers what it answers
over gRPC, the same keys and scopes, and every refusal is a JSON `google.rpc.Status` with the right HTTP status."""

from __future__ import annotations

import os
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from entitlements.v1 import entitlements_pb2 as pb
from entitlements.v1 import entitlements_pb2_grpc
from server.app import Service
from server.auth import hash_key, parse_api_keys
from server.config import HttpSettings, Settings, TLSSettings
from server.embedded import EmbeddedRedis
from server.errors import ConfigError
from server.http_api import web as http_web
from tests.helpers.http_api import call, http_base
from tests.helpers.services import PROJECT, READER_KEY, WRITER_KEY, ServiceFactory, sample, served, store_changes
from tests.helpers.stores import StoreUnderTest
from tests.helpers.waiting import eventually
from tests.test_auth import Pki, pki  # noqa: F401  # the certificates fixture

PLAYER = "player-1"


@pytest.fixture
async def stub(service: Service) -> AsyncIterator[entitlements_pb2_grpc.EntitlementServiceAsyncStub]:
    """A raw gRPC stub on the service, to send the very request sent over HTTP."""
    assert service.endpoints is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.endpoints.grpc_port}") as channel:
        yield entitlements_pb2_grpc.EntitlementServiceStub(channel)


def as_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message)


GRPC_KEY = (("authorization", f"Bearer {WRITER_KEY}"),)


async def test_every_rpc_answers_over_http_what_it_answers_over_grpc(
    service: Service, stub: entitlements_pb2_grpc.EntitlementServiceAsyncStub, http: aiohttp.ClientSession
) -> None:
    """Grant and Revoke over HTTP are the writes gRPC replays with the same key; reads (the batch check included)
    answer the same JSON."""
    base = http_base(service)
    grant = {"userId": PLAYER, "sku": "gold", "quantity": "5", "idempotencyKey": "g-1", "metadata": {"match": "7"}}
    granted = await call(http, "POST", base + "/v1/entitlements:grant", WRITER_KEY, json=grant)
    assert granted.status == 200, granted.body
    request = json_format.ParseDict(grant, pb.GrantRequest())
    replayed = await stub.Grant(request, metadata=GRPC_KEY)
    assert replayed.replayed
    assert granted.body == {k: v for k, v in as_json(replayed).items() if k != "replayed"}
    assert granted.body["entitlement"]["quantity"] == "5"
    for sku in ("a", "b", "c"):
        await stub.Grant(pb.GrantRequest(user_id=PLAYER, sku=sku, idempotency_key=f"k-{sku}"), metadata=GRPC_KEY)

    reads: list[tuple[str, Message, Any]] = [
        ("/v1/entitlements:check?userId=player-1&sku=gold", pb.CheckEntitlementRequest(user_id=PLAYER, sku="gold"),
         stub.CheckEntitlement),
        ("/v1/entitlements:check?user_id=player-1&sku=none", pb.CheckEntitlementRequest(user_id=PLAYER, sku="none"),
         stub.CheckEntitlement),
        ("/v1/entitlements?userId=player-1&pageSize=2&include_expired=true",
         pb.ListEntitlementsRequest(user_id=PLAYER, page_size=2, include_expired=True), stub.ListEntitlements),
        (f"/v1/subscriptions?userId=player-1&limit=3&projectId={PROJECT}",
         pb.ListSubscriptionsRequest(user_id=PLAYER, limit=3, project_id=PROJECT), stub.ListSubscriptions),
        ("/v1/ledger?userId=player-1&page_size=2", pb.ListLedgerRequest(user_id=PLAYER, page_size=2), stub.ListLedger),
    ]  # fmt: skip
    for path, message, rpc in reads:
        over_http = await call(http, "GET", base + path, WRITER_KEY)
        assert over_http.status == 200, (path, over_http.body)
        assert over_http.body == as_json(await rpc(message, metadata=GRPC_KEY)), path

    # The batch check is a POST with the pairs in its body; a bad pair is a 400 naming it, as over gRPC.
    batch = {"checks": [{"userId": PLAYER, "sku": "gold"}, {"userId": "nobody", "sku": "gold"},
                        {"user_id": PLAYER, "sku": "a"}, {"userId": PLAYER, "sku": "gold"}]}  # fmt: skip
    checked = await call(http, "POST", base + "/v1/entitlements:batchCheck", WRITER_KEY, json=batch)
    assert checked.status == 200, checked.body
    by_grpc = await stub.CheckEntitlements(
        json_format.ParseDict(batch, pb.CheckEntitlementsRequest()), metadata=GRPC_KEY
    )
    assert checked.body == as_json(by_grpc)
    assert [r.get("active", False) for r in checked.body["results"]] == [True, False, True, True]
    bad = {"checks": [{"userId": PLAYER, "sku": "gold"}, {"userId": PLAYER}]}
    refused = await call(http, "POST", base + "/v1/entitlements:batchCheck", WRITER_KEY, json=bad)
    assert refused.status == 400, refused.body
    assert refused.body["message"] == "checks[1].sku: is required"

    # A page token from gRPC continues the listing over HTTP, and the other way round.
    first = await stub.ListEntitlements(pb.ListEntitlementsRequest(user_id=PLAYER, page_size=2), metadata=GRPC_KEY)
    second = await call(
        http, "GET", base + "/v1/entitlements", WRITER_KEY,
        params={"userId": PLAYER, "pageSize": "2", "pageToken": first.next_page_token},
    )  # fmt: skip
    assert [e["sku"] for e in second.body["entitlements"]] == ["c", "gold"]

    revoke = {"userId": PLAYER, "sku": "a", "idempotencyKey": "r-1", "reason": "refund"}
    revoked = await call(http, "POST", base + "/v1/entitlements:revoke", WRITER_KEY, json=revoke)
    again = await stub.Revoke(json_format.ParseDict(revoke, pb.RevokeRequest()), metadata=GRPC_KEY)
    assert again.replayed
    assert revoked.body == {k: v for k, v in as_json(again).items() if k != "replayed"}
    assert revoked.body["revoked"] is True


async def test_query_parameters_follow_grpc_gateway(service: Service, http: aiohttp.ClientSession) -> None:
    """Proto and JSON names, booleans as Go reads them, enums and int64 as strings; anything else is 400 naming it."""
    base = http_base(service) + "/v1/entitlements"
    ok = await call(http, "GET", base + "?user_id=p&include_expired=1&page_size=10&projectId=0", READER_KEY)
    assert (ok.status, ok.body) == (200, {})
    refused = {
        "?user_id=p&color=red": "query parameter 'color': entitlements.v1.ListEntitlementsRequest has no such field",
        "?user_id=p&include_expired=maybe": "include_expired: 'maybe' is not a boolean",
        "?user_id=p&user_id=q": "query parameter 'user_id': given more than once",
        "?user_id=p&page_size=ten": "page_size",
        "?user_id=p&page_size=501": "page_size",
    }
    for query, message in refused.items():
        answer = await call(http, "GET", base + query, READER_KEY)
        assert answer.status == 400, query
        assert answer.body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert message in answer.body["message"], (query, answer.body)
        assert answer.body["details"] == []
    body = await call(http, "POST", http_base(service) + "/v1/entitlements:grant?sku=x", WRITER_KEY, json={})
    assert body.status == 400
    assert "takes every field in its body" in body.body["message"]


async def test_api_keys_and_scopes_are_those_of_grpc(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, http: aiohttp.ClientSession
) -> None:
    """No key or an unknown one: 401 with WWW-Authenticate; a key without the scope or the project: 403."""
    keys = parse_api_keys(
        f"writer:{hash_key(WRITER_KEY)}:read,write\nreader:{hash_key(READER_KEY)}:read\n"
        f"other:{hash_key('other-project-key-01')}:read,write:2"
    )
    service = await service_factory(
        **redis_server.settings, api_keys=keys, projects=served(PROJECT, 2, default=PROJECT)
    )
    grant = http_base(service) + "/v1/entitlements:grant"
    body = {"userId": PLAYER, "sku": "gold", "idempotencyKey": "k"}
    for key, status, code, message in [
        (None, 401, 16, "missing API key"),
        ("not-a-key-at-all-01", 401, 16, "unknown or malformed API key"),
        (READER_KEY, 403, 7, "lacks the 'write' scope"),
    ]:
        answer = await call(http, "POST", grant, key, json=body)
        assert (answer.status, answer.body["code"]) == (status, code), answer.body
        assert message in answer.body["message"]
        assert (answer.headers.get("WWW-Authenticate") == "Bearer") == (status == 401)
    bound = await call(http, "POST", grant, "other-project-key-01", json={**body, "projectId": str(PROJECT)})
    assert (bound.status, bound.body["code"]) == (403, 7)
    # The key bound to project 2 only: 0 resolves to its project.
    own = await call(http, "POST", grant, "other-project-key-01", json=body)
    assert (own.status, own.body["projectId"]) == (200, "2")
    ledger = http_base(service) + "/v1/ledger?userId=p"
    malformed = await call(http, "GET", ledger, None, headers={"Authorization": "Basic x"})
    assert malformed.status == 401
    assert sample(service, "entitlements_rpc_requests_total", method="Grant", code="PERMISSION_DENIED") == 2
    assert sample(service, "entitlements_http_requests_total", route="Grant", status="401") == 2


async def test_the_key_is_checked_before_a_request_the_http_layer_cannot_read(
    service: Service, http: aiohttp.ClientSession
) -> None:
    """A body that is not JSON, an unknown field, a wrong content type, a bad query value: without a valid key it is
    401, with a key lacking the scope 403, and only with a key that may call the RPC the 400/415 it deserves."""
    base = http_base(service)
    grant, check = base + "/v1/entitlements:grant", base + "/v1/entitlements:check?userId=p&sku=s&projectId=x"
    json_type = {"Content-Type": "application/json"}
    unreadable: list[tuple[str, str, dict[str, Any], int]] = [
        ("POST", grant, {"data": "{", "headers": json_type}, 400),
        ("POST", grant, {"json": {"userId": "p", "colour": "red"}}, 400),
        ("POST", grant, {"data": "{}", "headers": {"Content-Type": "text/plain"}}, 415),
        ("GET", check, {}, 400),
    ]
    for method, url, kwargs, deserved in unreadable:
        for key, status in ((None, 401), ("not-a-key-at-all-01", 401)):
            answer = await call(http, method, url, key, **kwargs)
            assert (answer.status, answer.body["code"]) == (status, 16), (url, kwargs, answer.body)
        scoped = await call(http, method, url, READER_KEY, **kwargs)
        expected = (403, 7) if url == grant else (deserved, 3)
        assert (scoped.status, scoped.body["code"]) == expected, (url, kwargs, scoped.body)
        allowed = await call(http, method, url, WRITER_KEY, **kwargs)
        assert (allowed.status, allowed.body["code"]) == (deserved, 3), (url, kwargs, allowed.body)


async def test_refusals_of_the_http_layer_are_json_and_write_nothing(
    service: Service, http: aiohttp.ClientSession, redis_server: StoreUnderTest
) -> None:
    """Bad JSON, an unknown or repeated field, a wrong content type, a body too large, an unknown path, a wrong method:
    each is a JSON Status with its HTTP status, and nothing is written."""
    base = http_base(service)
    grant = base + "/v1/entitlements:grant"
    json_type = {"Content-Type": "application/json"}
    redis = redis_server.client()
    try:
        before = await store_changes(redis)
        cases: list[tuple[str, str, dict[str, Any], int, int, str]] = [
            ("POST", grant, {"data": "{", "headers": json_type}, 400, 3, "request body: is not JSON"),
            ("POST", grant, {"data": "[1]", "headers": json_type}, 400, 3, "must be a JSON object"),
            ("POST", grant, {"data": b"\xff{}", "headers": json_type}, 400, 3, "request body: is not UTF-8"),
            ("POST", grant, {"json": {"userId": "p", "colour": "red"}}, 400, 3, 'no field named "colour"'),
            ("POST", grant, {"data": '{"sku": "a", "sku": "b"}', "headers": json_type}, 400, 3, "'sku' appears twice"),
            ("POST", grant, {"json": {"userId": "p", "user_id": "q"}}, 400, 3, "user_id is given twice"),
                ("POST", grant, {"json": {"quantity": "1_000"}}, 400, 3, "quantity: '1_000' is not an integer"),
            ("POST", grant, {"json": {"quantity": "lots"}}, 400, 3, "quantity"),
            ("GET", base + "/v1/entitlements:check?userId=p&sku=s&projectId=", {}, 400, 3, "'' is not an integer"),
            ("POST", grant, {"data": "{}", "headers": {"Content-Type": "text/plain"}}, 415, 3, "application/json"),
            ("POST", grant, {"data": "{}", "headers": {"Content-Type": "application/json; charset=latin-1"}}, 415, 3,
             "charset"),
            ("POST", grant, {"data": b" " * 300_000, "headers": json_type}, 413, 3, "larger than 262144 bytes"),
            ("GET", base + "/v1/nothing", {}, 404, 5, "no route"),
            ("GET", base + "/v1/entitlements:grant", {}, 405, 12, "takes POST"),
            ("PUT", base + "/healthz", {}, 405, 12, "takes GET"),
            ("GET", base + "/v1/entitlements:check?userId=p&sku=s", {"data": "x"}, 400, 3, "takes no body"),
            ("POST", grant, {"json": {}, "headers": {"Grpc-Timeout": "soon"}}, 400, 3, "Grpc-Timeout"),
        ]  # fmt: skip
        for method, url, kwargs, status, code, message in cases:
            answer = await call(http, method, url, WRITER_KEY, **kwargs)
            assert (answer.status, answer.body["code"]) == (status, code), (method, url, kwargs, answer.body)
            assert message in answer.body["message"], (message, answer.body)
            assert "int()" not in answer.body["message"], answer.body  # no Python wording reaches a caller
        wrong_method = await call(http, "DELETE", grant, WRITER_KEY)
        assert wrong_method.headers["Allow"] == "POST"
        assert await store_changes(redis) == before
    finally:
        await redis.aclose()
    assert sample(service, "entitlements_http_requests_total", route="none", status="404") == 1


async def test_a_deadline_header_bounds_the_call(
    service_factory: ServiceFactory, embedded_server: EmbeddedRedis, http: aiohttp.ClientSession
) -> None:
    """Grpc-Timeout is the call's deadline: with the store holding every answer (SIGSTOP), a deadline shorter than
    the store's own timeout (2 s) is 504 DEADLINE_EXCEEDED, not the store's 503."""
    service = await service_factory(redis_url=embedded_server.url)
    url = http_base(service) + "/v1/entitlements:check?userId=p&sku=s"
    for far in ("5S", "99999999H"):
        fine = await call(http, "GET", url, READER_KEY, headers={"Grpc-Timeout": far})
        assert fine.status == 200, far
    pid = embedded_server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        late = await call(http, "GET", url, READER_KEY, headers={"Grpc-Timeout": "300m"})
    finally:
        os.kill(pid, signal.SIGCONT)
    assert (late.status, late.body["code"]) == (504, grpc.StatusCode.DEADLINE_EXCEEDED.value[0])


async def test_redis_down_is_503_unavailable(
    service_factory: ServiceFactory, embedded_server: EmbeddedRedis, http: aiohttp.ClientSession
) -> None:
    """With Redis down a call is 503 with the UNAVAILABLE Status, and /healthz turns 503 NOT_SERVING."""
    service = await service_factory(redis_url=embedded_server.url, health_check_interval_s=0.1)
    base = http_base(service)
    healthy = await call(http, "GET", base + "/healthz", None)
    assert (healthy.status, healthy.body) == (200, {"status": "SERVING"})
    await embedded_server.stop()
    answer = await call(http, "GET", base + "/v1/entitlements:check?userId=p&sku=s", READER_KEY)
    assert (answer.status, answer.body["code"]) == (503, grpc.StatusCode.UNAVAILABLE.value[0])
    assert answer.body["message"]
    grant = {"userId": "p", "sku": "s", "idempotencyKey": "k"}
    assert (await call(http, "POST", base + "/v1/entitlements:grant", WRITER_KEY, json=grant)).status == 503

    async def not_serving() -> bool:
        sick = await call(http, "GET", base + "/healthz", None)
        return (sick.status, sick.body) == (503, {"status": "NOT_SERVING"})

    await eventually(not_serving, what="/healthz to say NOT_SERVING")
    unknown = await call(http, "GET", base + "/healthz?service=nope", None)
    assert (unknown.status, unknown.body["code"]) == (404, grpc.StatusCode.NOT_FOUND.value[0])


async def test_the_openapi_document_is_served_once_it_exists(
    service: Service, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /openapi.yaml needs no key: 404 JSON while its symlink points at nothing, the file once it exists."""
    document = tmp_path / "entitlements.v1.yaml"
    link = tmp_path / "openapi.yaml"
    link.symlink_to(document)
    monkeypatch.setattr(http_web, "OPENAPI_FILE", link)
    url = http_base(service) + "/openapi.yaml"
    missing = await call(http, "GET", url, None)
    assert (missing.status, missing.body["code"]) == (404, 5)
    document.write_text("openapi: 3.0.3\n")
    async with http.get(url) as response:
        assert response.status == 200
        assert response.content_type == "application/yaml"
        assert await response.text() == "openapi: 3.0.3\n"
    assert http_web.OPENAPI_FILE.name == "openapi.yaml"
    shipped = Path(http_web.__file__).with_name("openapi.yaml")
    assert shipped.is_symlink()
    assert str(shipped.readlink()) == "../../openapi/entitlements.v1.yaml"


async def test_https_with_the_services_certificate_and_client_certificates(
    service_factory: ServiceFactory,
    redis_server: StoreUnderTest,
    http: aiohttp.ClientSession,
    pki: Pki,  # noqa: F811
) -> None:
    """The HTTP port speaks TLS with the gRPC port's certificate; with a client CA, a client without a certificate
    it signed is refused during the handshake."""
    service = await service_factory(**redis_server.settings, tls=TLSSettings(pki.server_cert, pki.server_key))
    context = ssl.create_default_context(cafile=str(pki.ca))
    url = http_base(service, "https") + "/v1/entitlements:check?userId=p&sku=s"
    assert (await call(http, "GET", url, READER_KEY, ssl=context)).status == 200
    with pytest.raises(aiohttp.ClientError):
        await call(http, "GET", url.replace("https:", "http:"), READER_KEY)

    mutual = await service_factory(**redis_server.settings, tls=TLSSettings(pki.server_cert, pki.server_key, pki.ca))
    url = http_base(mutual, "https") + "/v1/entitlements:check?userId=p&sku=s"
    with pytest.raises(aiohttp.ClientError):
        await call(http, "GET", url, READER_KEY, ssl=context)
    with_cert = ssl.create_default_context(cafile=str(pki.ca))
    with_cert.load_cert_chain(pki.client_cert, pki.client_key)
    assert (await call(http, "GET", url, READER_KEY, ssl=with_cert)).status == 200


async def test_the_api_can_be_turned_off(service_factory: ServiceFactory, redis_server: StoreUnderTest) -> None:
    """ENTITLEMENTS_HTTP_ENABLED=false: no HTTP port, gRPC as before."""
    service = await service_factory(**redis_server.settings, http=HttpSettings(enabled=False))
    assert service.endpoints is not None
    assert service.endpoints.http_port is None
    assert service.http_api is None


def test_http_settings_come_from_the_environment() -> None:
    """The HTTP settings are read from ENTITLEMENTS_HTTP_*; out-of-range values are refused naming the variable."""
    env = {
        "ENTITLEMENTS_INSECURE_DEV_MODE": "1",
        "ENTITLEMENTS_HTTP_ENABLED": "false",
        "ENTITLEMENTS_HTTP_HOST": "192.0.2.1",
        "ENTITLEMENTS_HTTP_PORT": "9000",
        "ENTITLEMENTS_HTTP_MAX_BODY_BYTES": "4096",
        "ENTITLEMENTS_HTTP_SSE_HEARTBEAT_S": "5",
        "ENTITLEMENTS_HTTP_KEEPALIVE_TIMEOUT_S": "30",
    }
    assert Settings.from_env(env).http == HttpSettings(False, "192.0.2.1", 9000, 4096, 5.0, 30.0)
    assert Settings.from_env({"ENTITLEMENTS_INSECURE_DEV_MODE": "1"}).http == HttpSettings()
    for name, value in [("ENTITLEMENTS_HTTP_PORT", "70000"), ("ENTITLEMENTS_HTTP_MAX_BODY_BYTES", "10")]:
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({"ENTITLEMENTS_INSECURE_DEV_MODE": "1", name: value})
