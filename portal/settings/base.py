"""Settings shared by every environment.

Values come from the environment through :class:`portal.env.Env`. The module
for an environment (``local``, ``test``, ``production``) imports this one and
adds what differs; see the README for every variable.
"""

from __future__ import annotations

from pathlib import Path

from portal.env import Env

env = Env()

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(env.str("PORTAL_VAR_DIR", default=str(BASE_DIR / "var"))).resolve()

PORTAL_ENVIRONMENT = "base"
SERVICE_NAME = "Email integration portal"

DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.origins("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "crispy_forms",
    "crispy_forms_gds",
    "django_rq",
    "portal",
    "portal.accounts",
    "portal.audit",
    "portal.policy",
    "onboarding",
    "migration",
    "governance",
]

MIDDLEWARE = [
    # Outermost, so every response carries the policy, health probes and redirects included.
    "portal.security.ContentSecurityPolicyMiddleware",
    # Health probes answer before host validation, HTTPS redirects and sessions,
    # so a load balancer or container runtime can call them on any address.
    "portal.health.HealthCheckMiddleware",
    "portal.correlation.CorrelationIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.context_processors.portal",
            ],
        },
    },
]

DATABASES = {"default": env.database("DATABASE_URL", sqlite_path=VAR_DIR / "portal.sqlite3")}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60, minimum=0)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Unset REDIS_URL means the embedded Redis that `make run` starts on a unix
# socket inside VAR_DIR; nothing else is assumed to be listening.
EMBEDDED_REDIS_SOCKET = VAR_DIR / "redis" / "redis.sock"
REDIS_URL = env.url(
    "REDIS_URL",
    schemes=("redis", "rediss", "unix"),
    default=f"unix://{EMBEDDED_REDIS_SOCKET}",
)
RQ_QUEUES = {
    "default": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 600},
}
RQ_SHOW_ADMIN_LINK = False
# Forked jobs inherit the worker's Microsoft 365 tokens instead of each fetching their own.
RQ = {"WORKER_CLASS": "portal.worker.PortalWorker"}
# Shared by every web process: the short-lived dashboard figures (see portal/figures.py).
CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
# How long a dashboard may show figures computed earlier; the page says when they were worked out.
DASHBOARD_FIGURES_SECONDS = env.int("DASHBOARD_FIGURES_SECONDS", default=30, minimum=0, maximum=600)
# How long list rows drawn once are kept for the next person who asks for the same rows (see
# portal/templatetags/portal_fragments.py); 0 draws them on every request.
PAGE_FRAGMENT_SECONDS = env.int("PAGE_FRAGMENT_SECONDS", default=300, minimum=0, maximum=3600)

AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "accounts:sign_in"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "accounts:signed_out"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

SESSION_COOKIE_AGE = env.int("SESSION_COOKIE_AGE", default=8 * 60 * 60, minimum=300)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True
CSRF_FAILURE_VIEW = "portal.views.csrf_failure"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
CSRF_COOKIE_SAMESITE = "Lax"
# Scripts and styles come only from the portal's own files (no inline script, no style
# attributes); nothing may frame a page. See portal/security.py.
CONTENT_SECURITY_POLICY = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
    "base-uri": ["'self'"],
    "object-src": ["'none'"],
}
# Proxies in front of the portal that append the client's address to X-Forwarded-For; sign-in
# throttling counts attempts per client address, so it must know which entry to believe.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0, minimum=0, maximum=5)
# Password guessing against local accounts: after this many failed sign-ins for one username, or
# from one client address, further attempts are refused until the window has passed without one.
SIGN_IN_MAX_FAILURES_PER_USERNAME = env.int("SIGN_IN_MAX_FAILURES_PER_USERNAME", default=5, minimum=1)
SIGN_IN_MAX_FAILURES_PER_ADDRESS = env.int("SIGN_IN_MAX_FAILURES_PER_ADDRESS", default=20, minimum=1)
SIGN_IN_LOCKOUT_SECONDS = env.int("SIGN_IN_LOCKOUT_SECONDS", default=15 * 60, minimum=60, maximum=24 * 60 * 60)

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "Europe/London"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(VAR_DIR / "staticfiles")))
# GOV.UK Frontend assets and the compiled stylesheet, built by `npm run build`.
STATICFILES_DIRS = [BASE_DIR / "build" / "static"]

CRISPY_ALLOWED_TEMPLATE_PACKS = ["gds"]
CRISPY_TEMPLATE_PACK = "gds"

EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25, minimum=1, maximum=65535)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="email-integration-portal@localhost")

# Readiness probe budget: /readyz must answer within 2 s even when a dependency hangs.
READINESS_TIMEOUT_SECONDS = 1.5

LOG_LEVEL = env.choice("LOG_LEVEL", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"correlation": {"()": "portal.correlation.CorrelationIdFilter"}},
    "formatters": {
        "line": {"format": "%(asctime)s %(levelname)s %(name)s correlation_id=%(correlation_id)s %(message)s"}
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "line",
            "filters": ["correlation"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "rq.worker": {"level": LOG_LEVEL},
    },
}

# Shown under the service name in the header, e.g. "Department for Example".
ORGANISATION_NAME = env.str("ORGANISATION_NAME", default="")

# --- Microsoft 365 (Dataverse, Graph, Exchange Online admin) -----------------------------
# Off unless M365_TENANT_ID is set; `make run` points it at the tenant simulator.
from portal.m365.config import load_entra_signin_config, load_m365_config  # noqa: E402

M365 = load_m365_config()
ENTRA_SIGNIN = load_entra_signin_config()

# Where people reach the portal; used for links in email.
PORTAL_BASE_URL = env.url("PORTAL_BASE_URL", schemes=("http", "https"), default="http://127.0.0.1:8000")
