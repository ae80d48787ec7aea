"""Migration's URLs, one module per area, under the app namespace ``migration``."""

from .dashboard import urlpatterns as dashboard_urls
from .discovery import urlpatterns as discovery_urls
from .inventory import urlpatterns as inventory_urls
from .legacy_sources import urlpatterns as legacy_source_urls

app_name = "migration"

urlpatterns = [*dashboard_urls, *discovery_urls, *inventory_urls, *legacy_source_urls]
