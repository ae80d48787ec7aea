from django.urls import path

from . import views

app_name = "migration"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
]
