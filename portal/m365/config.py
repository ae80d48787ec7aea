"""The Microsoft 365 configuration block, read from the environment once at start-up.

One tenant; one or more application registrations. Each registration is its
own Dataverse application user with its own service-protection budget, so
adding registrations raises the portal's throughput. The first registration
is ``M365_CLIENT_ID``; more are ``M365_CLIENT_ID_2`` … ``M365_CLIENT_ID_9``,
each with its own secret or certificate variables carrying the same suffix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from portal.env import Env

MICROSOFT_AUTHORITY_HOSTS = {
    "login.microsoftonline.com",
    "login.microsoftonline.us",
    "login.chinacloudapi.cn",
    "login.partner.microsoftonline.cn",
}
MAX_REGISTRATIONS = 9


@dataclass(frozen=True)
class AppRegistration:
    """One Entra ID application registration (a Dataverse application user)."""

    name: str  # "1", "2", …: the suffix it was configured with
    client_id: str
    client_secret: str = field(default="", repr=False)
    cert_path: str = ""
    cert_thumbprint: str = ""

    @property
    def uses_certificate(self) -> bool:
        return bool(self.cert_path)


@dataclass(frozen=True)
class M365Config:
    enabled: bool
    tenant_id: str = ""
    authority_host: str = "https://login.microsoftonline.com"
    registrations: tuple[AppRegistration, ...] = ()
    dataverse_url: str = ""
    graph_url: str = "https://graph.microsoft.com"
    exchange_admin_url: str = "https://outlook.office365.com"
    ca_bundle: str = ""
    timeout_seconds: float = 30.0
    # Rate budgets (portal/m365/budget.py). Dataverse counts service protection limits per
    # application user over a sliding window; the defaults sit just below Microsoft's documented
    # 6,000 requests, 1,200 s of execution time and 52 concurrent requests per 300 s, so the
    # portal paces itself instead of collecting 429s. Graph allows 4 concurrent requests per app
    # per mailbox.
    dataverse_max_requests_per_window: int = 5800
    dataverse_window_seconds: int = 300
    dataverse_max_concurrent: int = 48
    dataverse_max_execution_seconds: int = 1100
    graph_max_concurrent_per_mailbox: int = 4

    @property
    def authority(self) -> str:
        return f"{self.authority_host.rstrip('/')}/{self.tenant_id}"

    @property
    def is_microsoft_authority(self) -> bool:
        return (urlsplit(self.authority_host).hostname or "") in MICROSOFT_AUTHORITY_HOSTS

    def scope_for(self, resource_url: str) -> str:
        """The client-credentials scope of a resource: ``<resource>/.default``."""
        return f"{resource_url.rstrip('/')}/.default"


def _https(env: Env, name: str, default: str | None) -> str:
    value = env.url(name, schemes=("https",), default=default)
    return value.rstrip("/") if value else ""


def _ca_bundle(env: Env) -> str:
    ca_bundle = env.str("M365_CA_BUNDLE", default="")
    if ca_bundle and not Path(ca_bundle).is_file():
        raise ImproperlyConfigured(
            f"Environment variable M365_CA_BUNDLE points at {ca_bundle}, which is not a readable file."
        )
    return ca_bundle


def _registration(env: Env, suffix: str) -> AppRegistration | None:
    tail = "" if suffix == "1" else f"_{suffix}"
    client_id = env.str(f"M365_CLIENT_ID{tail}", default="")
    if not client_id:
        return None
    secret = env.str(f"M365_CLIENT_SECRET{tail}", default="")
    cert_path = env.str(f"M365_CLIENT_CERT_PATH{tail}", default="")
    thumbprint = env.str(f"M365_CLIENT_CERT_THUMBPRINT{tail}", default="")
    if bool(secret) == bool(cert_path):
        raise ImproperlyConfigured(
            f"Environment variable M365_CLIENT_ID{tail} needs exactly one credential: "
            f"M365_CLIENT_SECRET{tail}, or M365_CLIENT_CERT_PATH{tail} with M365_CLIENT_CERT_THUMBPRINT{tail}."
        )
    if cert_path:
        if not thumbprint:
            raise ImproperlyConfigured(
                f"Environment variable M365_CLIENT_CERT_THUMBPRINT{tail} is required with M365_CLIENT_CERT_PATH{tail}."
            )
        if not Path(cert_path).is_file():
            raise ImproperlyConfigured(
                f"Environment variable M365_CLIENT_CERT_PATH{tail} points at {cert_path}, which is not a readable file."
            )
        thumbprint = thumbprint.replace(":", "").upper()
        if len(thumbprint) != 40 or any(c not in "0123456789ABCDEF" for c in thumbprint):
            raise ImproperlyConfigured(
                f"Environment variable M365_CLIENT_CERT_THUMBPRINT{tail} must be the certificate's "
                "SHA-1 thumbprint: 40 hexadecimal characters."
            )
    return AppRegistration(
        name=suffix, client_id=client_id, client_secret=secret, cert_path=cert_path, cert_thumbprint=thumbprint
    )


def load_m365_config(environ: Mapping[str, str] | None = None) -> M365Config:
    """Read the M365 block. Unset ``M365_TENANT_ID`` switches the integration off."""
    env = Env(environ)
    tenant_id = env.str("M365_TENANT_ID", default="")
    if not tenant_id:
        return M365Config(enabled=False)
    registrations = tuple(
        registration
        for suffix in (str(n) for n in range(1, MAX_REGISTRATIONS + 1))
        if (registration := _registration(env, suffix)) is not None
    )
    if not registrations or registrations[0].name != "1":
        raise ImproperlyConfigured(
            "Environment variable M365_CLIENT_ID is required when M365_TENANT_ID is set: "
            "the application (client) id of the portal's app registration."
        )
    ca_bundle = _ca_bundle(env)
    return M365Config(
        enabled=True,
        tenant_id=tenant_id,
        authority_host=_https(env, "M365_AUTHORITY_HOST", "https://login.microsoftonline.com"),
        registrations=registrations,
        dataverse_url=_https(env, "DATAVERSE_URL", None),
        graph_url=_https(env, "GRAPH_URL", "https://graph.microsoft.com"),
        exchange_admin_url=_https(env, "EXCHANGE_ADMIN_URL", "https://outlook.office365.com"),
        ca_bundle=ca_bundle,
        timeout_seconds=float(env.int("M365_TIMEOUT_SECONDS", default=30, minimum=1, maximum=300)),
        dataverse_max_requests_per_window=env.int(
            "DATAVERSE_MAX_REQUESTS_PER_WINDOW", default=5800, minimum=1, maximum=6000
        ),
        dataverse_window_seconds=env.int("DATAVERSE_WINDOW_SECONDS", default=300, minimum=1, maximum=3600),
        dataverse_max_concurrent=env.int("DATAVERSE_MAX_CONCURRENT", default=48, minimum=1, maximum=52),
        dataverse_max_execution_seconds=env.int(
            "DATAVERSE_MAX_EXECUTION_SECONDS", default=1100, minimum=1, maximum=1200
        ),
        graph_max_concurrent_per_mailbox=env.int("GRAPH_MAX_CONCURRENT_PER_MAILBOX", default=4, minimum=1, maximum=4),
    )


@dataclass(frozen=True)
class EntraSignInConfig:
    enabled: bool
    tenant_id: str = ""
    authority_host: str = "https://login.microsoftonline.com"
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    ca_bundle: str = ""

    @property
    def authority(self) -> str:
        return f"{self.authority_host.rstrip('/')}/{self.tenant_id}"

    @property
    def is_microsoft_authority(self) -> bool:
        return (urlsplit(self.authority_host).hostname or "") in MICROSOFT_AUTHORITY_HOSTS


def load_entra_signin_config(environ: Mapping[str, str] | None = None) -> EntraSignInConfig:
    """Entra ID sign-in for portal users; off unless ``ENTRA_SIGNIN_ENABLED`` is true."""
    env = Env(environ)
    if not env.bool("ENTRA_SIGNIN_ENABLED", default=False):
        return EntraSignInConfig(enabled=False)
    tenant_id = env.str("ENTRA_TENANT_ID", default="") or env.str(
        "M365_TENANT_ID", hint="the Entra ID tenant id (or set ENTRA_TENANT_ID)"
    )
    authority_host = _https(env, "ENTRA_AUTHORITY_HOST", None) or _https(
        env, "M365_AUTHORITY_HOST", "https://login.microsoftonline.com"
    )
    ca_bundle = _ca_bundle(env)
    return EntraSignInConfig(
        enabled=True,
        tenant_id=tenant_id,
        authority_host=authority_host,
        client_id=env.str("ENTRA_CLIENT_ID", hint="the application (client) id used for portal sign-in"),
        client_secret=env.str("ENTRA_CLIENT_SECRET", hint="the client secret of the sign-in app registration"),
        ca_bundle=ca_bundle,
    )
