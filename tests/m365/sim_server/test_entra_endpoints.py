"""The simulator's Entra ID endpoints answer as Entra does, to MSAL and to raw requests."""

from __future__ import annotations

from pathlib import Path

import jwt
import msal

from portal.m365.simulator.tls import certificate_thumbprint
from tests.m365.conftest import app_token
from tests.simulator import _TrustingSession


def test_discovery_document_has_what_msal_needs(sim):
    tenant = sim.env["M365_TENANT_ID"]
    document = sim.http.get(f"{sim.base_url}/{tenant}/v2.0/.well-known/openid-configuration").json()
    assert document["issuer"] == f"{sim.base_url}/{tenant}/v2.0"
    for key in ("authorization_endpoint", "token_endpoint", "jwks_uri", "end_session_endpoint"):
        assert document[key].startswith(f"{sim.base_url}/{tenant}/")
    keys = sim.http.get(document["jwks_uri"]).json()["keys"]
    assert keys and keys[0]["kty"] == "RSA"


def test_client_credentials_token_is_scoped_to_one_resource(sim):
    token = app_token(sim, "dataverse")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == f"{sim.base_url}/dataverse"
    assert claims["appid"] == sim.env["M365_CLIENT_ID"]
    assert claims["tid"] == sim.env["M365_TENANT_ID"]
    # A Dataverse token is refused by Graph, as a token for another audience is in Microsoft 365.
    response = sim.http.get(
        f"{sim.base_url}/graph/v1.0/users/nobody@example.gov.uk", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "InvalidAuthenticationToken"


def test_certificate_credential_works_like_the_secret(sim):
    session = _TrustingSession()
    session.verify = sim.env["M365_CA_BUNDLE"]
    cert_path = Path(sim.state_dir) / "app1-cert.pem"
    client = msal.ConfidentialClientApplication(
        sim.env["M365_CLIENT_ID"],
        client_credential={"private_key": cert_path.read_text(), "thumbprint": certificate_thumbprint(cert_path)},
        authority=f"{sim.env['M365_AUTHORITY_HOST']}/{sim.env['M365_TENANT_ID']}",
        instance_discovery=False,
        http_client=session,
    )
    result = client.acquire_token_for_client([f"{sim.base_url}/exchange/.default"])
    assert "access_token" in result, result


def test_wrong_secret_gets_entras_error_body(sim):
    tenant = sim.env["M365_TENANT_ID"]
    response = sim.http.post(
        f"{sim.base_url}/{tenant}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": sim.env["M365_CLIENT_ID"],
            "client_secret": "wrong",
            "scope": f"{sim.base_url}/dataverse/.default",
        },
    )
    assert response.status_code == 401
    body = response.json()
    assert body["error"] == "invalid_client"
    assert body["error_codes"] == [7000215]
    assert body["error_description"].startswith("AADSTS7000215:")
    assert body["correlation_id"] and body["trace_id"]


def test_unknown_scope_is_refused(sim):
    tenant = sim.env["M365_TENANT_ID"]
    response = sim.http.post(
        f"{sim.base_url}/{tenant}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": sim.env["M365_CLIENT_ID"],
            "client_secret": sim.env["M365_CLIENT_SECRET"],
            "scope": "https://elsewhere.example/.default",
        },
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"


def test_calls_without_a_token_are_refused_with_a_challenge(sim):
    response = sim.http.get(f"{sim.base_url}/dataverse/api/data/v9.2/WhoAmI")
    assert response.status_code == 401
    assert "authorization_uri" in response.headers["WWW-Authenticate"]
