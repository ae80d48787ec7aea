from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_http_methods, require_safe

from .entra import EntraSignInError, entra_sign_in_complete, entra_sign_in_start, entra_sign_out_url
from .forms import SignInForm
from .services import (
    SIGNED_OUT_METHOD_SESSION_KEY,
    SignInError,
    SignInThrottledError,
    SignInUnavailableError,
    session_sign_in,
    session_sign_out,
)

# Refused attempts say why in the status too, for monitoring and for scripts.
_SIGN_IN_ERROR_STATUS = {SignInThrottledError: 429, SignInUnavailableError: 503}


def _safe_next(request, candidate: str) -> str:
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return reverse(settings.LOGIN_REDIRECT_URL)


def _entra_sign_in_enabled(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Signing in with Microsoft does not exist while it is switched off."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.ENTRA_SIGNIN.enabled:
            raise Http404
        return view(request, *args, **kwargs)

    return wrapped


@sensitive_post_parameters("password")
@csrf_protect
@never_cache
@require_http_methods(["GET", "POST"])
def sign_in(request):
    next_url = request.POST.get("next") or request.GET.get("next", "")
    if request.user.is_authenticated and request.method == "GET":
        return redirect(_safe_next(request, next_url))
    form = SignInForm(request.POST if request.method == "POST" else None, initial={"next": next_url})
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            session_sign_in(
                request=request,
                username=form.cleaned_data["username"],
                password=form.cleaned_data["password"],
            )
        except SignInError as error:
            form.add_error(None, error.message)
            status = _SIGN_IN_ERROR_STATUS.get(type(error), 200)
        else:
            return redirect(_safe_next(request, next_url))
    return render(
        request,
        "accounts/sign_in.html",
        {"form": form, "next": next_url, "entra_sign_in": settings.ENTRA_SIGNIN.enabled},
        status=status,
    )


def _entra_error(request: HttpRequest, error: EntraSignInError) -> HttpResponse:
    return render(
        request,
        "accounts/entra_error.html",
        {
            "title": error.title,
            "message": error.message,
            "next": error.next_url,
            "reference": getattr(request, "correlation_id", ""),
        },
        status=error.status,
    )


# Starting writes the flow into the session, so it is a CSRF-checked POST from
# the sign-in page's button: another site cannot start (or replace) a sign-in in
# someone's browser, and link prefetchers cannot either. A GET (a bookmark, an
# old link) is sent to the sign-in page.
@_entra_sign_in_enabled
@csrf_protect
@never_cache
@require_http_methods(["GET", "POST"])
def entra_start(request):
    next_url = request.POST.get("next") or request.GET.get("next", "")
    if request.method == "GET":
        query = f"?{urlencode({'next': next_url})}" if next_url else ""
        return redirect(f"{reverse('accounts:sign_in')}{query}")
    try:
        authorize_url = entra_sign_in_start(request=request, next_url=next_url)
    except EntraSignInError as error:
        return _entra_error(request, error)
    return redirect(authorize_url)


# Microsoft sends the browser back with a top-level GET (response_mode=query): the
# session cookie is SameSite=Lax, so a cross-site form POST back would arrive
# without it.
@_entra_sign_in_enabled
@never_cache
@require_GET
def entra_callback(request):
    try:
        signed_in = entra_sign_in_complete(request=request)
    except EntraSignInError as error:
        return _entra_error(request, error)
    return redirect(signed_in.next_url or reverse(settings.LOGIN_REDIRECT_URL))


@never_cache
@require_http_methods(["GET", "POST"])
def sign_out(request):
    if request.method == "POST":
        session_sign_out(request=request)
        return redirect("accounts:signed_out")
    if not request.user.is_authenticated:
        return redirect("accounts:sign_in")
    return render(request, "accounts/sign_out.html")


@require_safe
@never_cache
def signed_out(request):
    via_entra = request.session.pop(SIGNED_OUT_METHOD_SESSION_KEY, "") == "entra"
    microsoft_sign_out_url = entra_sign_out_url(request=request) if via_entra else None
    return render(request, "accounts/signed_out.html", {"microsoft_sign_out_url": microsoft_sign_out_url})
