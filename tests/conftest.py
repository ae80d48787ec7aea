"""Shared fixtures: one persona per role, an outsider, and a clean Redis for queue tests."""

from __future__ import annotations

import django_rq
import pytest
from django.test import Client

from portal.accounts.roles import Role
from tests.factories import UserFactory


@pytest.fixture
def requester(db):
    return UserFactory(username="riya", first_name="Riya", last_name="Patel", roles=[Role.REQUESTER])


@pytest.fixture
def approver(db):
    return UserFactory(username="owen", first_name="Owen", last_name="Hughes", roles=[Role.APPROVER])


@pytest.fixture
def platform_admin(db):
    return UserFactory(username="grace", first_name="Grace", last_name="Okafor", roles=[Role.PLATFORM_ADMIN])


@pytest.fixture
def migration_lead(db):
    return UserFactory(username="tom", first_name="Tom", last_name="Fletcher", roles=[Role.MIGRATION_LEAD])


@pytest.fixture
def auditor(db):
    return UserFactory(username="aisha", first_name="Aisha", last_name="Khan", roles=[Role.AUDITOR])


@pytest.fixture
def outsider(db):
    return UserFactory(username="sam", first_name="Sam", last_name="Doyle", roles=[])


@pytest.fixture
def client_for():
    """A test client signed in as the given user (session login, no audit event)."""

    def make(user) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make


@pytest.fixture
def redis_queue():
    """The real default RQ queue on the test Redis database, emptied before and after."""
    queue = django_rq.get_queue("default")
    queue.connection.flushdb()
    yield queue
    queue.connection.flushdb()
