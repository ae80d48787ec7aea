"""Factories for onboarding: teams, requests in any state, and a configured approval route."""

from __future__ import annotations

import itertools

import factory
from django.utils import timezone

from onboarding.models import (
    DataClassification,
    MailboxKind,
    MailboxRequest,
    QueueVisibility,
    RequestMember,
    RequestStatus,
)
from portal.accounts.models import Team
from portal.policy.models import TrackingRule

_references = itertools.count(1)


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Team
        django_get_or_create = ("name",)
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"Team {n}")
    business_unit = "Corporate Services"

    @factory.post_generation
    def business_owners(self, create, extracted, **kwargs):
        if extracted:
            self.business_owners.set(extracted)

    @factory.post_generation
    def members(self, create, extracted, **kwargs):
        if extracted:
            self.members.set(extracted)


class MailboxRequestFactory(factory.django.DjangoModelFactory):
    """A complete request (every answer given) in DRAFT unless ``status`` says otherwise."""

    class Meta:
        model = MailboxRequest
        skip_postgeneration_save = True

    reference = factory.LazyFunction(lambda: f"MBX-T{next(_references):06d}")
    kind = MailboxKind.QUEUE
    status = RequestStatus.DRAFT
    requester = factory.SubFactory("tests.factories.UserFactory")
    team = factory.SubFactory(TeamFactory)
    display_name = factory.Sequence(lambda n: f"Finance enquiries {n}")
    local_part = factory.Sequence(lambda n: f"finance-enquiries-{n}")
    domain = "example.gov.uk"
    owner = factory.SubFactory("tests.factories.UserFactory")
    backup_owner = factory.SubFactory("tests.factories.UserFactory")
    justification = "Customers write to the finance team about invoices; the team answers from Dynamics 365."
    queue_visibility = QueueVisibility.PUBLIC
    tracking_rule = TrackingRule.EMAIL_ENABLED_RECORDS
    expected_daily_volume = 40
    typical_attachment_kb = 300
    retention_months = 24
    data_classification = DataClassification.OFFICIAL
    created_at = factory.LazyFunction(timezone.now)
    updated_at = factory.LazyFunction(timezone.now)


class RequestMemberFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = RequestMember

    request = factory.SubFactory(MailboxRequestFactory)
    email = factory.Sequence(lambda n: f"member{n}@example.gov.uk")
