"""Shared plumbing: TLS trust that environment variables cannot override, and every service's errors."""

from __future__ import annotations

import datetime as dt
import email.utils
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import certifi
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from portal.m365.errors import AccessDeniedError, TransientError, ValidationError
from portal.m365.exchange import ExchangeAdminClient
from portal.m365.graph import GraphClient
from portal.m365.http import build_session, parse_retry_after
from tests.m365.clients.conftest import GRAPH_API, INVOKE_URL, make_config


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _tls_material(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a certificate for 127.0.0.1 that it issued."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Test tenant CA"))
        .issuer_name(_name("Test tenant CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_path, cert_path, key_path


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep test output quiet
        return None


@contextmanager
def _https_server(cert_path: Path, key_path: Path) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_tenant_ca_is_trusted_even_when_requests_ca_bundle_points_elsewhere(tmp_path, monkeypatch):
    ca_path, cert_path, key_path = _tls_material(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())  # set for other tools on the machine
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())
    session = build_session(make_config(ca_bundle=str(ca_path)))

    with _https_server(cert_path, key_path) as url:
        assert session.get(url, timeout=5).json() == {"status": "ok"}
        with pytest.raises(requests.exceptions.SSLError):
            requests.Session().get(url, timeout=5)  # a plain session lets the variable win


def test_the_extra_ca_is_added_to_the_public_ones_not_instead_of_them(tmp_path):
    ca_path, _, _ = _tls_material(tmp_path)

    session = build_session(make_config(ca_bundle=str(ca_path)))

    bundle = Path(session.verify).read_bytes()
    assert Path(certifi.where()).read_bytes().strip() in bundle
    assert ca_path.read_bytes().strip() in bundle
    assert build_session(make_config(ca_bundle=str(ca_path))) is session  # one per process


def test_proxy_variables_still_apply(tmp_path, monkeypatch):
    ca_path, _, _ = _tls_material(tmp_path)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.test:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    session = build_session(make_config(ca_bundle=str(ca_path)))

    settings = session.merge_environment_settings("https://contoso.crm11.example.test/", {}, None, None, None)

    assert settings["proxies"]["https"] == "http://proxy.example.test:3128"
    assert settings["verify"] == session.verify


def test_without_an_extra_ca_the_public_cas_are_used(monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/bundle.pem")

    session = build_session(make_config())

    assert session.merge_environment_settings("https://x.example.test/", {}, None, None, None)["verify"] == (
        certifi.where()
    )


def test_graph_errors_carry_code_message_and_the_inner_request_id(config, make_budget, entra, requests_mock):
    requests_mock.get(
        f"{GRAPH_API}users/someone%2Fodd@example.gov.uk",
        status_code=400,
        json={
            "error": {
                "code": "Request_BadRequest",
                "message": "Invalid object identifier 'someone/odd@example.gov.uk'.",
                "innerError": {"date": "2026-11-26T18:00:00", "request-id": "8a2c-graph"},
            }
        },
    )
    client = GraphClient(config, limiter=None)

    with pytest.raises(ValidationError) as raised:
        client.get_user("someone/odd@example.gov.uk")

    error = raised.value
    assert (error.status, error.code, error.request_id, error.service) == (
        400,
        "Request_BadRequest",
        "8a2c-graph",
        "graph",
    )
    assert "Invalid object identifier" in error.message


def test_exchange_errors_carry_the_cmdlet_message(config, entra, requests_mock):
    requests_mock.post(
        INVOKE_URL,
        status_code=400,
        json={
            "error": {
                "code": "BadRequest",
                "message": "|Microsoft.Exchange.Management.Tasks.RecipientTaskException|Ex6F9304|"
                "A mailbox with the address finance@example.gov.uk already exists.",
            }
        },
    )

    with pytest.raises(ValidationError, match="already exists") as raised:
        ExchangeAdminClient(config).new_shared_mailbox(
            name="Finance", display_name="Finance", primary_smtp_address="finance@example.gov.uk"
        )

    assert (raised.value.service, raised.value.code, raised.value.status) == ("exchange", "BadRequest", 400)


def test_a_gateway_page_instead_of_json_still_becomes_a_transient_error(config, entra, requests_mock, fake_time):
    requests_mock.post(INVOKE_URL, status_code=502, text="<html><body>Bad Gateway</body></html>")

    with pytest.raises(TransientError) as raised:
        ExchangeAdminClient(config, sleep=fake_time.sleep, clock=fake_time.monotonic).add_recipient_permission(
            identity="finance@example.gov.uk", trustee="asha@example.gov.uk"
        )

    assert raised.value.status == 502
    assert "Bad Gateway" in raised.value.message
    assert fake_time.sleeps == []  # a write: the job decides


def test_forbidden_is_access_denied(config, entra, requests_mock):
    requests_mock.post(
        INVOKE_URL, status_code=403, json={"error": {"code": "Forbidden", "message": "Not assigned an Exchange role."}}
    )

    with pytest.raises(AccessDeniedError):
        ExchangeAdminClient(config).get_mailbox("finance@example.gov.uk")


def test_retry_after_is_read_in_seconds_or_as_a_date():
    later = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90), usegmt=True)

    assert parse_retry_after("12") == 12.0
    assert 85 <= parse_retry_after(later) <= 90
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
