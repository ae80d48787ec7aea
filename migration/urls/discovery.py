from django.urls import path

from migration.views import discovery as views

urlpatterns = [
    path("discovery/", views.discovery, name="discovery"),
    path("discovery/sync/", views.discovery_sync, name="discovery_sync"),
]
