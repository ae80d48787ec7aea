"""Migration's URLs, one module per area, under the app namespace ``migration``."""

from .dashboard import urlpatterns as dashboard_urls
from .decommission import urlpatterns as decommission_urls
from .discovery import urlpatterns as discovery_urls
from .inventory import urlpatterns as inventory_urls
from .legacy_sources import urlpatterns as legacy_source_urls
from .waves import urlpatterns as wave_urls

app_name = "migration"

urlpatterns = [
    *dashboard_urls,
    *discovery_urls,
    *inventory_urls,
    *legacy_source_urls,
    *wave_urls,
    *decommission_urls,
]
