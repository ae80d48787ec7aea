from django.urls import path

from onboarding.views import approvals as views

urlpatterns = [
    path("approvals/", views.approvals_dashboard, name="approvals"),
    path("approvals/out-of-office/", views.out_of_office, name="out_of_office"),
    path(
        "approvals/out-of-office/<int:delegation_id>/cancel/",
        views.out_of_office_cancel,
        name="out_of_office_cancel",
    ),
    path("approvals/<int:stage_id>/", views.approval_decision, name="approval_decision"),
    path("platform/approval-stages/", views.approval_stages, name="approval_stages"),
    path("platform/approval-stages/add/", views.approval_stage_add, name="approval_stage_add"),
    path("platform/approval-stages/<int:stage_id>/", views.approval_stage_change, name="approval_stage_change"),
    path("platform/approval-stages/<int:stage_id>/move/", views.approval_stage_move, name="approval_stage_move"),
    path(
        "platform/approval-stages/<int:stage_id>/deactivate/",
        views.approval_stage_deactivate,
        name="approval_stage_deactivate",
    ),
    path(
        "platform/approval-stages/<int:stage_id>/activate/",
        views.approval_stage_activate,
        name="approval_stage_activate",
    ),
]
