"""Decommission plans for each legacy source."""

from django.urls import path

from migration.views import decommission as views

urlpatterns = [
    path("decommission/", views.decommission_list, name="decommission"),
    path("decommission/outlook-populations/", views.decommission_outlook_sync, name="decommission_outlook_sync"),
    path("decommission/process-email-using/check/", views.decommission_org_check, name="decommission_org_check"),
    path("decommission/<int:source_id>/", views.decommission_plan, name="decommission_plan"),
    path("decommission/<int:source_id>/start/", views.decommission_plan_start, name="decommission_plan_start"),
    path("decommission/<int:source_id>/details/", views.decommission_plan_details, name="decommission_plan_details"),
    path("decommission/<int:source_id>/sign-off/", views.decommission_sign_off, name="decommission_sign_off"),
    path("decommission/items/<int:item_id>/", views.decommission_item, name="decommission_item"),
    path("decommission/evidence/<int:evidence_id>/", views.decommission_evidence, name="decommission_evidence"),
]
