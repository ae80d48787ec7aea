"""Managed mailboxes' health, volume and retention."""

from django.urls import path

from governance.views import mailboxes as views

urlpatterns = [
    path("mailboxes/", views.mailbox_list, name="mailboxes"),
    path("mailboxes/<int:mailbox_id>/", views.mailbox_health, name="mailbox"),
    path("teams/<int:team_id>/", views.team_health, name="team"),
    path("retention/", views.retention_list, name="retention"),
]
