"""Response headers Django does not send by itself, and the client address behind the proxy.

Django's ``SecurityMiddleware`` and ``XFrameOptionsMiddleware`` send HSTS, ``nosniff``, the
referrer and opener policies and ``X-Frame-Options``; Django 5.2 has no Content-Security-Policy,
so this module adds one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from urllib.parse import urlsplit

from django.conf import settings
from django.http import HttpRequest, HttpResponse

HEADER = "Content-Security-Policy"


def content_security_policy() -> str:
    """The policy from ``settings.CONTENT_SECURITY_POLICY``, one directive per entry.

    Signing in with Microsoft posts a form to the portal that redirects to the Entra authority;
    browsers hold that redirect to ``form-action`` too, so the authority's origin is allowed
    there while Entra sign-in is switched on.
    """
    directives = {name: list(sources) for name, sources in settings.CONTENT_SECURITY_POLICY.items()}
    if settings.ENTRA_SIGNIN.enabled:
        authority = urlsplit(settings.ENTRA_SIGNIN.authority_host)
        directives.setdefault("form-action", []).append(f"{authority.scheme}://{authority.netloc}")
    return "; ".join(" ".join([name, *sources]) for name, sources in directives.items())


class ContentSecurityPolicyMiddleware:
    """Send the portal's Content-Security-Policy with every response.

    It sits first in ``MIDDLEWARE`` so that responses made before the view runs (health probes,
    redirects to HTTPS or to the slash-ended address) carry it too. A response that already has a
    policy keeps it: a downloaded file is served with a stricter, sandboxing one.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if HEADER not in response:
            response[HEADER] = content_security_policy()
        return response


def client_address(request: HttpRequest) -> str:
    """The address of the person's browser (an IPv6 /64), as far as the portal can trust it.

    Behind ``settings.TRUSTED_PROXY_COUNT`` proxies that each append to ``X-Forwarded-For``, the
    client is that many entries from the right; entries further left are whatever the client sent
    and prove nothing. With no proxies (or no header) it is the connection's own address.
    """
    proxies = settings.TRUSTED_PROXY_COUNT
    remote = request.META.get("REMOTE_ADDR", "")
    if proxies:
        forwarded = [entry.strip() for entry in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        forwarded = [entry for entry in forwarded if entry]
        if len(forwarded) >= proxies:
            remote = forwarded[-proxies]
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        # A proxy that writes something other than an address is misconfigured; count those
        # attempts together rather than letting each odd value start a fresh count.
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            return str(address.ipv4_mapped)
        # One IPv6 host usually holds a whole /64, so that is what one client is.
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
