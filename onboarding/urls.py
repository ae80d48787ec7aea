from django.urls import path

from . import views

app_name = "onboarding"

urlpatterns = [
    path("requests/", views.requests_dashboard, name="requests"),
    path("approvals/", views.approvals_dashboard, name="approvals"),
]
