"""Onboarding's URLs, one module per area, under the app namespace ``onboarding``."""

from .approvals import urlpatterns as approval_urls
from .mailbox_requests import urlpatterns as request_urls
from .provisioning import urlpatterns as provisioning_urls

app_name = "onboarding"

urlpatterns = [*request_urls, *approval_urls, *provisioning_urls]
