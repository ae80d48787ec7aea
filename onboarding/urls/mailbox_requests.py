from django.urls import path

from onboarding.views import mailbox_requests as views

urlpatterns = [
    path("requests/", views.requests_dashboard, name="requests"),
]
