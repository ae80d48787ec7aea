"""Tokens from a real MSAL confidential client against a stubbed Entra ID (not Microsoft's host)."""

from __future__ import annotations

import base64
import datetime as dt
import logging

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from portal.m365.dataverse import DataverseClient
from portal.m365.errors import AuthenticationError, TransientError
from portal.m365.tokens import TokenProvider
from tests.m365.clients.conftest import DATAVERSE, DATAVERSE_API, TOKEN_URL, make_config, registration

WHO_AM_I = {
    "BusinessUnitId": "11111111-1111-4111-8111-111111111111",
    "UserId": "22222222-2222-4222-8222-222222222222",
    "OrganizationId": "33333333-3333-4333-8333-333333333333",
}


def _certificate_file(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "portal app")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "app1-cert.pem"
    path.write_bytes(
        certificate.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path, certificate


def test_one_token_request_serves_many_calls(config, make_budget, entra, requests_mock):
    requests_mock.get(f"{DATAVERSE_API}WhoAmI", json=WHO_AM_I)
    client = DataverseClient(config, config.registrations[0], budget=make_budget())

    for _ in range(5):
        client.who_am_i()

    assert len(entra.token_requests) == 1
    form = entra.form()
    assert form["grant_type"] == "client_credentials"
    assert form["scope"] == f"{DATAVERSE}/.default"
    assert {r.headers["Authorization"] for r in requests_mock.request_history if "WhoAmI" in r.url} == {
        "Bearer access-token-1"
    }


def test_a_second_client_for_the_same_registration_reuses_the_process_token(config, make_budget, entra, requests_mock):
    requests_mock.get(f"{DATAVERSE_API}WhoAmI", json=WHO_AM_I)

    DataverseClient(config, config.registrations[0], budget=make_budget()).who_am_i()
    DataverseClient(config, config.registrations[0], budget=make_budget()).who_am_i()

    assert len(entra.token_requests) == 1


def test_each_resource_gets_its_own_token(config, entra):
    tokens = TokenProvider(config=config, registration=config.registrations[0])

    dataverse = tokens.token(scope=config.scope_for(config.dataverse_url))
    graph = tokens.token(scope=config.scope_for(config.graph_url))

    assert dataverse != graph
    assert [entra.form(i)["scope"] for i in range(2)] == [
        f"{DATAVERSE}/.default",
        "https://graph.example.test/.default",
    ]


def test_a_certificate_credential_signs_a_client_assertion(tmp_path, entra):
    path, certificate = _certificate_file(tmp_path)
    thumbprint = certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - Entra's x5t
    app = registration(client_secret="", cert_path=str(path), cert_thumbprint=thumbprint)
    config = make_config(app)

    TokenProvider(config=config, registration=app).token(scope=f"{DATAVERSE}/.default")

    form = entra.form()
    assert "client_secret" not in form
    assert "Authorization" not in entra.token_requests[-1].headers  # no secret as Basic auth either
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assertion = form["client_assertion"]
    header = jwt.get_unverified_header(assertion)
    expected_x5t = base64.urlsafe_b64encode(bytes.fromhex(thumbprint)).rstrip(b"=").decode()
    assert header["alg"] == "RS256"
    assert header["x5t"].rstrip("=") == expected_x5t  # MSAL keeps the base64 padding
    claims = jwt.decode(assertion, certificate.public_key(), algorithms=["RS256"], audience=TOKEN_URL)
    assert claims["iss"] == claims["sub"] == app.client_id


def test_a_certificate_with_another_thumbprint_is_refused_clearly(tmp_path, entra):
    path, _ = _certificate_file(tmp_path)
    app = registration(client_secret="", cert_path=str(path), cert_thumbprint="AB" * 20)

    with pytest.raises(AuthenticationError, match="not the configured ABAB"):
        TokenProvider(config=make_config(app), registration=app).token(scope=f"{DATAVERSE}/.default")

    assert entra.token_requests == []


def test_entra_refusing_the_credential_is_an_authentication_error(config, entra, requests_mock):
    requests_mock.post(
        TOKEN_URL,
        status_code=401,
        json={
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided.",
            "error_codes": [7000215],
            "correlation_id": "c0ffee00-0000-4000-8000-000000000001",
        },
    )

    with pytest.raises(AuthenticationError) as raised:
        TokenProvider(config=config, registration=config.registrations[0]).token(scope=f"{DATAVERSE}/.default")

    error = raised.value
    assert (error.code, error.service, error.request_id) == (
        "invalid_client",
        "entra",
        "c0ffee00-0000-4000-8000-000000000001",
    )
    assert "AADSTS7000215" in error.message
    assert not error.is_transient


def test_entra_unreachable_is_transient(config, entra, requests_mock):
    requests_mock.post(TOKEN_URL, exc=requests.ConnectTimeout("connect timed out"))

    with pytest.raises(TransientError) as raised:
        TokenProvider(config=config, registration=config.registrations[0]).token(scope=f"{DATAVERSE}/.default")

    assert raised.value.service == "entra"


def test_an_unknown_tenant_is_an_authentication_error(config, requests_mock):
    requests_mock.get(
        f"{config.authority}/v2.0/.well-known/openid-configuration", status_code=400, json={"error": "invalid_tenant"}
    )

    with pytest.raises(AuthenticationError, match="setting up the sign-in authority"):
        TokenProvider(config=config, registration=config.registrations[0]).token(scope=f"{DATAVERSE}/.default")


def test_tokens_and_secrets_never_reach_the_log(config, entra, caplog):
    with caplog.at_level(logging.DEBUG):
        token = TokenProvider(config=config, registration=config.registrations[0]).token(scope=f"{DATAVERSE}/.default")

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert token not in logged
    assert config.registrations[0].client_secret not in logged
    assert "service=entra method=POST" in logged
