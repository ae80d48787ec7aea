from django.urls import path

from . import views

app_name = "policy"

urlpatterns = [
    path("", views.policy_summary, name="summary"),
    path("blackout-windows/add/", views.policy_blackout_add, name="blackout_add"),
    path("blackout-windows/<int:window_id>/remove/", views.policy_blackout_remove, name="blackout_remove"),
    path("<slug:section>/", views.policy_section_change, name="section_change"),
]
