from django.urls import path

from onboarding.views import approvals as views

urlpatterns = [
    path("approvals/", views.approvals_dashboard, name="approvals"),
]
