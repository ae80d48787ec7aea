from django.urls import include, path

from portal import views

urlpatterns = [
    path("", views.home, name="home"),
    path("platform/", views.platform, name="platform"),
    path("accessibility/", views.accessibility, name="accessibility"),
    path("cookies/", views.cookies, name="cookies"),
    path("accounts/", include("portal.accounts.urls")),
    path("audit/", include("portal.audit.urls")),
    path("", include("onboarding.urls")),
    path("migration/", include("migration.urls")),
    path("policy/", include("portal.policy.urls")),
    path("health/", include("governance.urls")),
]

handler500 = "portal.views.server_error"
