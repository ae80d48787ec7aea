"""Decommission plans for each legacy source."""

urlpatterns: list = []
