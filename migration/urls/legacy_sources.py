from django.urls import path

from migration.views import annotations as annotation_views
from migration.views import legacy_sources as views

urlpatterns = [
    path("legacy-sources/", views.legacy_sources, name="legacy_sources"),
    path("legacy-sources/add-email-router/", views.router_add, name="legacy_source_router_add"),
    path("legacy-sources/<int:source_id>/", views.legacy_source, name="legacy_source"),
    path("legacy-sources/imports/<int:import_id>/", views.router_import, name="router_import"),
    path("annotations/", annotation_views.annotations, name="annotations"),
    path("annotations/export.csv", annotation_views.annotations_export, name="annotations_export"),
    path("annotations/<int:mailbox_id>/", annotation_views.annotation_edit, name="annotation_edit"),
]
