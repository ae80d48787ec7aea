"""Factories for the inventory: mailboxes in any classification, annotations, history and legacy sources.

``InventoryMailboxFactory()`` builds a compliant server-side sync mailbox owned by
a user; pass ``classification=``/``readiness=`` and the facts you care about.
``inventory_mailboxes(n, **fields)`` inserts many in one statement for list tests.
"""

from __future__ import annotations

import hashlib
import uuid

import factory
from django.utils import timezone

from migration.models import (
    Classification,
    ExchangePresence,
    InventoryAnnotation,
    InventoryChange,
    InventoryMailbox,
    InventorySync,
    LegacyMailboxLink,
    LegacySource,
    LegacySourceKind,
    OwnerType,
    Readiness,
    RouterImport,
    SyncKind,
    SyncStatus,
)


class InventorySyncFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = InventorySync

    kind = SyncKind.FULL
    status = SyncStatus.SUCCEEDED
    requested_at = factory.LazyFunction(timezone.now)
    started_at = factory.LazyAttribute(lambda o: o.requested_at)
    finished_at = factory.LazyAttribute(lambda o: o.requested_at)


class InventoryMailboxFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = InventoryMailbox

    dataverse_id = factory.LazyFunction(uuid.uuid4)
    name = factory.Sequence(lambda n: f"Mailbox {n:05d}")
    email_address = factory.Sequence(lambda n: f"mailbox{n:05d}@example.gov.uk")
    owner_type = OwnerType.USER
    owner_dataverse_id = factory.LazyFunction(uuid.uuid4)
    owner_name = factory.LazyAttribute(lambda o: o.name)
    business_unit_id = factory.LazyFunction(uuid.uuid4)
    business_unit_name = "Corporate Services"
    team_name = "Corporate Services team"
    profile_id = factory.LazyFunction(uuid.uuid4)
    profile_name = "Microsoft Exchange Online"
    incoming_delivery = 2
    outgoing_delivery = 2
    act_delivery = 1
    email_approval = 1
    incoming_status = 1
    outgoing_status = 1
    act_status = 1
    exchange_presence = ExchangePresence.EXCHANGE_ONLINE
    user_purpose = "user"
    presence_checked_at = factory.LazyFunction(timezone.now)
    classification = Classification.COMPLIANT_SSS
    readiness = Readiness.COMPLIANT
    blockers = factory.LazyFunction(list)
    explanation = "Server-side synchronisation on the Exchange Online profile, with the mailbox in Exchange Online."
    dataverse_modified_on = factory.LazyFunction(timezone.now)
    first_seen_at = factory.LazyFunction(timezone.now)
    last_seen_at = factory.LazyFunction(timezone.now)


def inventory_mailboxes(count: int, **fields) -> list[InventoryMailbox]:
    """``count`` mailboxes inserted with one bulk statement (ids set on PostgreSQL)."""
    return InventoryMailbox.objects.bulk_create(
        [InventoryMailboxFactory.build(**fields) for _ in range(count)], batch_size=1000
    )


class InventoryAnnotationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = InventoryAnnotation

    mailbox = factory.SubFactory(InventoryMailboxFactory)
    updated_at = factory.LazyFunction(timezone.now)
    updated_by = factory.SubFactory("tests.factories.UserFactory")


class InventoryChangeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = InventoryChange

    mailbox = factory.SubFactory(InventoryMailboxFactory)
    at = factory.LazyFunction(timezone.now)
    changes = factory.LazyFunction(lambda: {"incoming_delivery": [1, 2]})


class LegacySourceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = LegacySource
        django_get_or_create = ("name",)

    kind = LegacySourceKind.EMAIL_ROUTER
    name = factory.Sequence(lambda n: f"ROUTER{n:02d}")
    created_at = factory.LazyFunction(timezone.now)
    created_by = factory.SubFactory("tests.factories.UserFactory")


_EMPTY_CONFIGURATION = b"<Configuration />"


class RouterImportFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = RouterImport

    source = factory.SubFactory(LegacySourceFactory)
    status = "succeeded"
    file_name = "Microsoft.Crm.Tools.EmailAgent.xml"
    content = _EMPTY_CONFIGURATION
    file_size = len(_EMPTY_CONFIGURATION)
    file_sha256 = hashlib.sha256(_EMPTY_CONFIGURATION).hexdigest()
    uploaded_by = factory.LazyAttribute(lambda o: o.source.created_by)
    uploaded_at = factory.LazyFunction(timezone.now)
    finished_at = factory.LazyFunction(timezone.now)


class LegacyMailboxLinkFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = LegacyMailboxLink

    router_import = factory.SubFactory(RouterImportFactory)
    source = factory.LazyAttribute(lambda o: o.router_import.source)
    mailbox = factory.SubFactory(InventoryMailboxFactory)
    email_address = factory.LazyAttribute(
        lambda o: o.mailbox.email_address if o.mailbox else "unmatched@example.gov.uk"
    )
    object_type = "user"
    object_name = factory.LazyAttribute(lambda o: o.mailbox.name if o.mailbox else "")
    directions = factory.LazyFunction(lambda: ["incoming", "outgoing"])
    profile_names = factory.LazyFunction(lambda: ["Incoming POP3", "Outgoing SMTP"])


# --- waves and pre-flights ----------------------------------------------------------------------


class WaveFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "migration.Wave"

    name = factory.Sequence(lambda n: f"Wave {n}")
    created_by = factory.SubFactory("tests.factories.UserFactory")
    created_at = factory.LazyFunction(timezone.now)


class WaveMailboxFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "migration.WaveMailbox"

    wave = factory.SubFactory(WaveFactory)
    mailbox = factory.SubFactory(InventoryMailboxFactory, readiness=Readiness.READY)
    position = factory.Sequence(lambda n: n + 1)
    is_queue = factory.LazyAttribute(lambda o: o.mailbox.owner_type == OwnerType.QUEUE)


class PreflightRunFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "migration.PreflightRun"

    wave = factory.SubFactory(WaveFactory)
    status = "finished"
    requested_by = factory.LazyAttribute(lambda o: o.wave.created_by if o.wave else None)
    requested_at = factory.LazyFunction(timezone.now)
    finished_at = factory.LazyFunction(timezone.now)


class PreflightResultFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "migration.PreflightResult"

    preflight = factory.SubFactory(PreflightRunFactory)
    mailbox = factory.SubFactory(InventoryMailboxFactory)
    verdict = "ready"
    checked_at = factory.LazyFunction(timezone.now)


# --- decommissioning, progress and timelines ---------------------------------------------------


def router_serving(source: LegacySource, *mailboxes: InventoryMailbox) -> RouterImport:
    """Record that the Email Router ``source`` serves these mailboxes (one import, one link each)."""
    record = RouterImportFactory(source=source)
    for mailbox in mailboxes:
        LegacyMailboxLinkFactory(router_import=record, source=source, mailbox=mailbox)
    return record
