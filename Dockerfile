# syntax=docker/dockerfile:1

# --- Stage 1: front-end assets from the npm registry -------------------------------
FROM node:20-slim AS assets
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY scripts/build-assets.mjs scripts/
COPY assets/ assets/
RUN npm run build

# --- Stage 2: the Python runtime ---------------------------------------------------
FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=portal.settings.production \
    STATIC_ROOT=/app/staticfiles \
    PORTAL_VAR_DIR=/app/var
WORKDIR /app

RUN groupadd --system portal && useradd --system --gid portal --home-dir /app --shell /usr/sbin/nologin portal

COPY requirements/ requirements/
RUN pip install -r requirements/production.txt

COPY manage.py ./
COPY portal/ portal/
COPY onboarding/ onboarding/
COPY migration/ migration/
COPY governance/ governance/
COPY templates/ templates/
COPY --from=assets /src/build/static build/static

# collectstatic only reads settings; these throwaway values never reach a running container.
RUN SECRET_KEY=collectstatic-only-0123456789abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJ \
    ALLOWED_HOSTS=localhost \
    DATABASE_URL=postgres://unused@localhost:5432/unused \
    REDIS_URL=redis://localhost:6379/0 \
    python manage.py collectstatic --noinput \
 && mkdir -p /app/var && chown portal:portal /app/var

USER portal
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3).status == 200 else 1)"]

# The web server. Run the RQ worker from the same image with:
#   python manage.py rqworker --with-scheduler default
CMD ["gunicorn", "portal.wsgi", \
     "--bind", "0.0.0.0:8000", \
     "--workers", "3", \
     "--access-logfile", "-", \
     "--no-control-socket", \
     "--forwarded-allow-ips", "*"]
