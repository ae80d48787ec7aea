"""Waves: building, pre-flight, approval, running and rollback."""

urlpatterns: list = []
