"""Tracking-rule governance: the estate report, change requests and their decisions, under /health/tracking/."""

from django.urls import path

from governance.views import tracking as views

urlpatterns = [
    path("tracking/", views.tracking_report, name="tracking_report"),
    path("tracking/mailboxes/<int:mailbox_id>/request/", views.tracking_request, name="tracking_request"),
    path("tracking/changes/", views.tracking_changes, name="tracking_changes"),
    path("tracking/changes/<int:change_id>/", views.tracking_change, name="tracking_change"),
    path("tracking/changes/<int:change_id>/decide/", views.tracking_change_decide, name="tracking_change_decide"),
    path("tracking/changes/<int:change_id>/retry/", views.tracking_change_retry, name="tracking_change_retry"),
]
