"""The alert review queue and the health sync."""

from django.urls import path

from governance.views import alerts as views

urlpatterns = [
    path("", views.alert_list, name="alerts"),
    path("alerts/<int:alert_id>/", views.alert_detail, name="alert"),
    path("sync/", views.health_sync_now, name="health_sync"),
]
