"""Mailbox health and governance URLs, one module per area, under the app namespace ``governance``."""

from .alerts import urlpatterns as alert_urls
from .mailboxes import urlpatterns as mailbox_urls
from .tracking import urlpatterns as tracking_urls

app_name = "governance"

urlpatterns = [
    *alert_urls,
    *mailbox_urls,
    *tracking_urls,
]
