"""Waves: building, pre-flight, approval, running and rollback."""

from django.urls import path

from migration.views import waves as views

urlpatterns = [
    path("waves/", views.wave_list, name="waves"),
    path("waves/new/", views.wave_new, name="wave_new"),
    path("waves/new/mailboxes/", views.wave_new_filters, name="wave_new_filters"),
    path("waves/new/upload/", views.wave_new_upload, name="wave_new_upload"),
    path("waves/new/check/", views.wave_new_check, name="wave_new_check"),
    path("waves/<int:wave_id>/", views.wave_detail, name="wave"),
    path("waves/<int:wave_id>/progress.json", views.wave_progress, name="wave_progress"),
    path("waves/<int:wave_id>/decision/", views.wave_decide, name="wave_decide"),
    path(
        "waves/<int:wave_id>/<str:action>/",
        views.wave_action,
        name="wave_action",
    ),
    path(
        "waves/<int:wave_id>/mailboxes/<int:entry_id>/rollback/",
        views.wave_mailbox_rollback,
        name="wave_mailbox_rollback",
    ),
    path(
        "waves/<int:wave_id>/mailboxes/<int:entry_id>/priority/",
        views.wave_mailbox_priority,
        name="wave_mailbox_priority",
    ),
    path("waves/<int:wave_id>/preflights/<int:preflight_id>/", views.wave_preflight, name="wave_preflight"),
    path(
        "waves/<int:wave_id>/preflights/<int:preflight_id>/export.csv",
        views.wave_preflight_export,
        name="wave_preflight_export",
    ),
]
