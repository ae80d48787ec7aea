from django.urls import path

from . import views

app_name = "accounts"

urlpatterns = [
    path("sign-in/", views.sign_in, name="sign_in"),
    path("sign-out/", views.sign_out, name="sign_out"),
    path("signed-out/", views.signed_out, name="signed_out"),
    path("entra/start/", views.entra_start, name="entra_start"),
    path("entra/callback/", views.entra_callback, name="entra_callback"),
]
