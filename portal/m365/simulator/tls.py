"""Key material the simulator generates once per state directory.

A certificate authority (its PEM is what the portal trusts through
``M365_CA_BUNDLE``), a server certificate for 127.0.0.1 and localhost signed by
it, a token-signing key, and a certificate for the first application
registration so the certificate credential can be exercised like the secret.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class KeyMaterial:
    ca_pem: Path
    server_cert_pem: Path
    server_key_pem: Path
    signing_key_pem: Path
    app_cert_pem: Path  # certificate + private key, as M365_CLIENT_CERT_PATH expects


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Email integration portal tenant simulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def ensure_key_material(state_dir: Path) -> KeyMaterial:
    material = KeyMaterial(
        ca_pem=state_dir / "ca.pem",
        server_cert_pem=state_dir / "server-cert.pem",
        server_key_pem=state_dir / "server-key.pem",
        signing_key_pem=state_dir / "token-signing-key.pem",
        app_cert_pem=state_dir / "app1-cert.pem",
    )
    if all(path.exists() for path in material.__dict__.values()):
        return material
    state_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)

    ca_key = _key()
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Tenant simulator CA"))
        .issuer_name(_name("Tenant simulator CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = _key()
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    app_key = _key()
    app_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("portal-app-1"))
        .issuer_name(_name("portal-app-1"))
        .public_key(app_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=730))
        .sign(app_key, hashes.SHA256())
    )

    _write(material.ca_pem, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(material.server_cert_pem, server_cert.public_bytes(serialization.Encoding.PEM))
    _write(material.server_key_pem, _key_pem(server_key))
    _write(material.signing_key_pem, _key_pem(_key()))
    _write(material.app_cert_pem, app_cert.public_bytes(serialization.Encoding.PEM) + _key_pem(app_key))
    material.ca_pem.chmod(0o644)
    return material


def certificate_thumbprint(pem_path: Path) -> str:
    """SHA-1 thumbprint (upper-case hex), as Entra ID shows it and MSAL expects."""
    cert = x509.load_pem_x509_certificate(pem_path.read_bytes())
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - thumbprints are SHA-1 by definition


def certificate_public_key(pem_path: Path):
    return x509.load_pem_x509_certificate(pem_path.read_bytes()).public_key()


def certificate_sha256(pem_path: Path) -> bytes:
    return x509.load_pem_x509_certificate(pem_path.read_bytes()).fingerprint(hashes.SHA256())
