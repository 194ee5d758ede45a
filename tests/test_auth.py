"""API keys and scopes, TLS and mTLS on the gRPC port (and TLS on the console's)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from entitlements import (
    AuthenticationError,
    PermissionDeniedError,
    TLSConfig,
    UnavailableError,
)
from server.app import Service
from server.auth import parse_api_keys
from server.config import Settings, TLSSettings
from server.embedded import EmbeddedRedis
from server.errors import ConfigError
from tests.helpers.console import AGENT_KEY, console_service, hidden
from tests.helpers.services import READER_KEY, WRITER_KEY, ClientFactory, ServiceFactory


async def test_missing_key_is_unauthenticated(service: Service, client_factory: ClientFactory) -> None:
    """A call without an API key is UNAUTHENTICATED."""
    client = await client_factory(service, api_key=None)
    with pytest.raises(AuthenticationError, match="missing API key"):
        await client.check_entitlement("player-1", "gold")


async def test_unknown_key_is_unauthenticated(service: Service, client_factory: ClientFactory) -> None:
    """A call with a key that is not configured is UNAUTHENTICATED, for reads and writes alike."""
    client = await client_factory(service, api_key="not-a-configured-key")
    with pytest.raises(AuthenticationError, match="unknown or malformed API key"):
        await client.check_entitlement("player-1", "gold")
    with pytest.raises(AuthenticationError):
        await client.grant("player-1", "gold")


async def test_read_key_cannot_write(service: Service, client_factory: ClientFactory) -> None:
    """A key with only the read scope may check but not grant or revoke."""
    reader = await client_factory(service, api_key=READER_KEY)
    assert not (await reader.check_entitlement("player-1", "gold")).active
    with pytest.raises(PermissionDeniedError, match="lacks the 'write' scope"):
        await reader.grant("player-1", "gold")
    with pytest.raises(PermissionDeniedError):
        await reader.revoke("player-1", "gold")
    writer = await client_factory(service, api_key=WRITER_KEY)
    assert not (await writer.check_entitlement("player-1", "gold")).active


def test_no_keys_refuses_to_serve() -> None:
    """Without API keys the service refuses to start unless development mode is explicitly on."""
    with pytest.raises(ConfigError, match="no API keys configured"):
        Settings.from_env({}).check_servable()
    Settings.from_env({"ENTITLEMENTS_INSECURE_DEV_MODE": "1"}).check_servable()


async def test_insecure_dev_mode_lets_any_caller_in(
    service_factory: ServiceFactory, redis_server: EmbeddedRedis, client_factory: ClientFactory
) -> None:
    """In development mode with no keys configured, callers need no key and have every scope."""
    service = await service_factory(redis_url=redis_server.url, api_keys=(), insecure_dev_mode=True)
    client = await client_factory(service, api_key=None)
    assert (await client.grant("player-1", "gold")).entitlement.quantity == 1


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("justone", "is not name:sha256-hex:scopes"),
        ("k:abc:read", "must be 64 hex characters"),
        ("k:" + "a" * 64 + ":admin", "scopes must be a comma list"),
        ("k:" + "a" * 64 + ":read;k:" + "b" * 64 + ":read", "duplicate name or key"),
        ("bad name!:" + "a" * 64 + ":read", "name must be"),
    ],
)
def test_bad_key_entries_are_config_errors(text: str, problem: str) -> None:
    """Malformed key entries are refused with a message naming the entry, never echoing the hash."""
    with pytest.raises(ValueError, match=problem) as caught:
        parse_api_keys(text)
    assert "a" * 64 not in str(caught.value)
    with pytest.raises(ConfigError, match="ENTITLEMENTS_API_KEYS"):
        Settings.from_env({"ENTITLEMENTS_API_KEYS": text})


@dataclass
class Pki:
    """A throwaway CA with a server and a client certificate, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _issue(
    name: str,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    *,
    ca: bool,
    server: bool,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key or key, hashes.SHA256()), key


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """Certificates for TLS tests."""
    ca_cert, ca_key = _issue("test-ca", None, None, ca=True, server=False)
    ca_path, _ = _write(tmp_path / "ca", ca_cert, ca_key)
    server_cert, server_key = _issue("localhost", ca_cert.subject, ca_key, ca=False, server=True)
    client_cert, client_key = _issue("game-server", ca_cert.subject, ca_key, ca=False, server=False)
    s_cert, s_key = _write(tmp_path / "server", server_cert, server_key)
    c_cert, c_key = _write(tmp_path / "client", client_cert, client_key)
    return Pki(ca_path, s_cert, s_key, c_cert, c_key)


async def test_tls_port_serves_tls_clients(
    service_factory: ServiceFactory, redis_server: EmbeddedRedis, client_factory: ClientFactory, pki: Pki
) -> None:
    """With a certificate configured the port speaks TLS: TLS clients work, plaintext ones do not."""
    service = await service_factory(redis_url=redis_server.url, tls=TLSSettings(pki.server_cert, pki.server_key))
    tls_client = await client_factory(service, tls=TLSConfig(root_certificates=pki.ca.read_bytes()), timeout_s=2.0)
    assert (await tls_client.grant("player-1", "gold")).entitlement.quantity == 1
    plain = await client_factory(service, timeout_s=1.0, retry_policy=None)
    with pytest.raises(UnavailableError):
        await plain.check_entitlement("player-1", "gold")


async def test_mtls_requires_a_client_certificate(
    service_factory: ServiceFactory, redis_server: EmbeddedRedis, client_factory: ClientFactory, pki: Pki
) -> None:
    """With a client CA configured, only clients presenting a certificate it signed get in."""
    service = await service_factory(
        redis_url=redis_server.url, tls=TLSSettings(pki.server_cert, pki.server_key, pki.ca)
    )
    with_cert = await client_factory(
        service,
        tls=TLSConfig(
            root_certificates=pki.ca.read_bytes(),
            private_key=pki.client_key.read_bytes(),
            certificate_chain=pki.client_cert.read_bytes(),
        ),
    )
    assert (await with_cert.grant("player-1", "gold")).entitlement.quantity == 1
    without_cert = await client_factory(
        service, tls=TLSConfig(root_certificates=pki.ca.read_bytes()), timeout_s=1.0, retry_policy=None
    )
    with pytest.raises(UnavailableError):
        await without_cert.check_entitlement("player-1", "gold")


def test_half_tls_configuration_is_refused() -> None:
    """A certificate without its key (or a client CA alone) is a configuration error."""
    with pytest.raises(ConfigError, match="must be set together"):
        Settings.from_env({"ENTITLEMENTS_TLS_CERT_FILE": "/x.crt", "ENTITLEMENTS_INSECURE_DEV_MODE": "1"})
    with pytest.raises(ConfigError, match="needs ENTITLEMENTS_TLS_CERT_FILE"):
        Settings.from_env({"ENTITLEMENTS_TLS_CLIENT_CA_FILE": "/ca.crt", "ENTITLEMENTS_INSECURE_DEV_MODE": "1"})


async def test_the_console_serves_tls_with_the_services_certificate(
    service_factory: ServiceFactory, redis_server: EmbeddedRedis, pki: Pki
) -> None:
    """With the gRPC port's certificate the console speaks HTTPS, and its session cookie is Secure."""
    service = await console_service(service_factory, redis_server.url, tls=TLSSettings(pki.server_cert, pki.server_key))
    assert service.endpoints is not None
    base = f"https://127.0.0.1:{service.endpoints.console_port}"
    context = ssl.create_default_context(cafile=str(pki.ca))
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar, connector=aiohttp.TCPConnector(ssl=context)) as http:
        async with http.get(base + "/login") as response:
            token = hidden(await response.text(), "login_token")
        async with http.post(base + "/login", data={"api_key": AGENT_KEY, "login_token": token}) as response:
            assert response.status == 200
        cookie = next(c for c in jar if c.key == "console_session")
        assert cookie["secure"]
