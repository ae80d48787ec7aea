from django.urls import path

from migration.views import dashboard as views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
]
