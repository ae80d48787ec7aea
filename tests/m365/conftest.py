"""Simulator fixtures live in tests/conftest.py; this re-export keeps the imports short."""

from tests.conftest import app_token

__all__ = ["app_token"]
