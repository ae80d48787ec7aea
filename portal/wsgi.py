"""WSGI entry point for gunicorn: ``gunicorn portal.wsgi``."""

import os
import sys

from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.production")

try:
    application = get_wsgi_application()
except ImproperlyConfigured as error:
    sys.stderr.write(f"Configuration error: {error}\n")
    # 4 is gunicorn's "application could not load": it stops instead of restarting workers forever.
    sys.exit(4)
