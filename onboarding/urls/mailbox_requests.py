from django.urls import path

from onboarding.views import mailbox_requests as views

urlpatterns = [
    path("requests/", views.requests_dashboard, name="requests"),
    path("requests/new/", views.request_start, name="request_start"),
    path("requests/<int:pk>/", views.request_detail, name="request_detail"),
    path("requests/<int:pk>/continue/", views.request_continue, name="request_continue"),
    path("requests/<int:pk>/questions/<slug:question>/", views.request_question, name="request_question"),
    path("requests/<int:pk>/members/", views.request_members, name="request_members"),
    path(
        "requests/<int:pk>/members/<int:member_id>/remove/",
        views.request_member_remove,
        name="request_member_remove",
    ),
    path("requests/<int:pk>/check/", views.request_check, name="request_check"),
    path("requests/<int:pk>/submitted/", views.request_submitted, name="request_submitted"),
    path("requests/<int:pk>/withdraw/", views.request_withdraw, name="request_withdraw"),
]
