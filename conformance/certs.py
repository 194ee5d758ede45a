"""A throwaway certificate authority for the mTLS scenarios: a server certificate for 127.0.0.1 and a client's."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from entitlements import TLSConfig


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class Certificates:
    """PEM files in `directory`: `ca_cert`, `server_cert`/`server_key` (127.0.0.1, localhost), `client_cert`/
    `client_key` (signed by the same CA, for mTLS)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca_cert = directory / "ca.pem"
        self.server_cert = directory / "server.pem"
        self.server_key = directory / "server.key"
        self.client_cert = directory / "client.pem"
        self.client_key = directory / "client.key"

    def write(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(_name("conformance CA"))
            .issuer_name(_name("conformance CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        for cert_path, key_path, name, usage, alt_names in (
            (
                self.server_cert,
                self.server_key,
                "localhost",
                ExtendedKeyUsageOID.SERVER_AUTH,
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
            ),
            (self.client_cert, self.client_key, "conformance client", ExtendedKeyUsageOID.CLIENT_AUTH, []),
        ):
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (
                x509.CertificateBuilder()
                .subject_name(_name(name))
                .issuer_name(ca.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5))
                .not_valid_after(now + timedelta(days=1))
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            )
            if alt_names:
                builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            cert = builder.sign(ca_key, hashes.SHA256())
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            key_path.write_bytes(_key_pem(key))

    def client_tls(self) -> TLSConfig:
        return TLSConfig.from_files(
            root_certificates_file=self.ca_cert,
            private_key_file=self.client_key,
            certificate_chain_file=self.client_cert,
        )
