from django.urls import path

from onboarding.views import provisioning as views

urlpatterns = [
    path("platform/provisioning/", views.provisioning_runs, name="provisioning_runs"),
    path("platform/provisioning/<int:run_id>/", views.provisioning_run, name="provisioning_run"),
    path(
        "platform/provisioning/<int:run_id>/steps/<int:step_id>/retry/",
        views.provisioning_step_retry,
        name="provisioning_step_retry",
    ),
    path(
        "platform/provisioning/<int:run_id>/steps/<int:step_id>/done/",
        views.provisioning_step_done,
        name="provisioning_step_done",
    ),
]
