"""The classification rules, one class and one blocker at a time (pure functions, no database)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from migration.classification import MailboxFacts, approval_required, classify, owner_type_of
from migration.models import Classification, ExchangePresence, OwnerType, Readiness

EXO_PROFILE = "6f1c1c39-2b5d-4f1e-9d0c-0c8a3c1f0a01"
OTHER_PROFILE = "6f1c1c39-2b5d-4f1e-9d0c-0c8a3c1f0a02"


def compliant(**changes) -> MailboxFacts:
    """A compliant server-side sync mailbox, as the simulator's seed builds one; change what the test is about."""
    facts = MailboxFacts(
        email_address="casework@example.gov.uk",
        owner_type=OwnerType.USER,
        owner_disabled=False,
        incoming_delivery=2,
        outgoing_delivery=2,
        act_delivery=1,
        email_approval=1,
        incoming_status=1,
        outgoing_status=1,
        is_forward_mailbox=False,
        profile_id=EXO_PROFILE,
        profile_is_exchange_online=True,
        profile_is_legacy=False,
        exchange_presence=ExchangePresence.EXCHANGE_ONLINE,
    )
    return replace(facts, **changes)


def codes(facts: MailboxFacts) -> list[str]:
    return [blocker.code for blocker in classify(facts).blockers]


# --- classes ---------------------------------------------------------------------------------------


def test_server_side_sync_on_the_exchange_online_profile_in_exchange_online_is_compliant():
    verdict = classify(compliant())
    assert verdict.classification == Classification.COMPLIANT_SSS
    assert verdict.readiness == Readiness.COMPLIANT
    assert verdict.blockers == []
    assert "Exchange Online profile" in verdict.explanation


@pytest.mark.parametrize(
    ("changes", "explained"),
    [
        ({"incoming_delivery": 1}, "Incoming email is processed by Dynamics 365 for Outlook"),
        ({"outgoing_delivery": 1}, "Outgoing email is processed"),
        ({"act_delivery": 0}, "Appointments, contacts and tasks is processed"),
        ({"incoming_delivery": 1, "outgoing_delivery": 1, "act_delivery": 0}, "are processed"),
    ],
)
def test_any_direction_on_dynamics_365_for_outlook_is_the_outlook_client(changes, explained):
    verdict = classify(compliant(**changes))
    assert verdict.classification == Classification.OUTLOOK_CLIENT
    assert explained in verdict.explanation


def test_the_outlook_client_wins_over_a_forward_mailbox_or_a_legacy_profile():
    facts = compliant(
        incoming_delivery=3, outgoing_delivery=1, profile_is_exchange_online=False, profile_is_legacy=True
    )
    assert classify(facts).classification == Classification.OUTLOOK_CLIENT


@pytest.mark.parametrize(
    "changes",
    [
        {"incoming_delivery": 3},
        {"is_forward_mailbox": True, "owner_type": OwnerType.NONE, "outgoing_delivery": 0, "act_delivery": 2},
    ],
    ids=["incoming through a forward mailbox", "the forward mailbox itself"],
)
def test_forward_mailboxes(changes):
    assert classify(compliant(**changes)).classification == Classification.FORWARD_MAILBOX


@pytest.mark.parametrize(
    "changes",
    [
        {"profile_id": None, "profile_is_exchange_online": False},
        {"profile_id": OTHER_PROFILE, "profile_is_exchange_online": False, "profile_is_legacy": True},
    ],
    ids=["no profile", "a POP3/SMTP profile"],
)
def test_router_delivery_without_a_modern_profile_is_the_email_router(changes):
    verdict = classify(compliant(**changes))
    assert verdict.classification == Classification.EMAIL_ROUTER
    assert "Email Router" in verdict.explanation


def test_a_mailbox_an_imported_router_configuration_lists_is_the_email_router_unless_on_exchange_online():
    listed = compliant(profile_id=OTHER_PROFILE, profile_is_exchange_online=False, listed_by_router=True)
    assert classify(listed).classification == Classification.EMAIL_ROUTER
    already_moved = compliant(listed_by_router=True)
    assert classify(already_moved).classification == Classification.COMPLIANT_SSS


@pytest.mark.parametrize("presence", [ExchangePresence.NOT_IN_EXCHANGE_ONLINE, ExchangePresence.NOT_FOUND])
def test_server_side_sync_for_a_mailbox_graph_cannot_find_is_not_in_exchange_online(presence):
    verdict = classify(compliant(exchange_presence=presence))
    assert verdict.classification == Classification.NOT_IN_EXCHANGE_ONLINE
    assert verdict.readiness == Readiness.BLOCKED


def test_server_side_sync_on_another_profile_is_non_compliant():
    facts = compliant(profile_id=OTHER_PROFILE, profile_is_exchange_online=False)
    verdict = classify(facts)
    assert verdict.classification == Classification.SSS_WRONG_PROFILE
    assert verdict.readiness == Readiness.READY


@pytest.mark.parametrize(
    "changes",
    [{"incoming_delivery": 0, "outgoing_delivery": 0}, {"owner_disabled": True}],
    ids=["no delivery at all", "a disabled owner"],
)
def test_no_delivery_or_a_disabled_owner_is_no_email(changes):
    assert classify(compliant(**changes)).classification == Classification.NO_EMAIL


def test_a_disabled_owner_wins_over_everything_else():
    facts = compliant(
        owner_disabled=True, incoming_delivery=1, exchange_presence=ExchangePresence.NOT_IN_EXCHANGE_ONLINE
    )
    verdict = classify(facts)
    assert verdict.classification == Classification.NO_EMAIL
    assert "disabled" in verdict.explanation


# --- blockers and readiness --------------------------------------------------------------------------


def test_a_non_compliant_mailbox_with_nothing_in_the_way_is_ready():
    verdict = classify(compliant(incoming_delivery=1))
    assert verdict.readiness == Readiness.READY
    assert verdict.blockers == []


def test_no_address():
    assert codes(compliant(incoming_delivery=1, email_address="")) == ["no_address"]


def test_owner_disabled():
    verdict = classify(compliant(owner_disabled=True))
    assert [blocker.code for blocker in verdict.blockers] == ["owner_disabled"]
    assert verdict.readiness == Readiness.BLOCKED


def test_mailbox_not_in_exchange_online():
    assert codes(compliant(incoming_delivery=1, exchange_presence=ExchangePresence.NOT_IN_EXCHANGE_ONLINE)) == [
        "not_in_exchange_online"
    ]


def test_nobody_in_the_directory_has_the_address():
    assert codes(compliant(incoming_delivery=1, exchange_presence=ExchangePresence.NOT_FOUND)) == ["not_in_directory"]


def test_presence_not_checked_yet():
    blockers = classify(compliant(incoming_delivery=1, exchange_presence=ExchangePresence.UNKNOWN)).blockers
    assert [blocker.code for blocker in blockers] == ["presence_unknown"]
    assert "Run discovery again" in blockers[0].fix


def test_presence_is_not_a_blocker_when_there_is_nothing_to_check():
    assert codes(compliant(incoming_delivery=0, outgoing_delivery=0, exchange_presence=ExchangePresence.UNKNOWN)) == []
    assert codes(compliant(incoming_delivery=1, email_address="", exchange_presence=ExchangePresence.UNKNOWN)) == [
        "no_address"
    ]


@pytest.mark.parametrize("approval", [0, 2, 3, None])
def test_address_not_approved_when_the_organisation_requires_approval(approval):
    assert codes(compliant(incoming_delivery=1, email_approval=approval)) == ["address_not_approved"]
    assert codes(compliant(incoming_delivery=1, email_approval=approval, approval_required=False)) == []


def test_no_email_mailboxes_are_not_blocked_by_a_missing_approval():
    assert codes(compliant(incoming_delivery=0, outgoing_delivery=0, email_approval=0)) == []


def test_alerts_block_a_migration_and_mark_a_compliant_mailbox_without_changing_its_readiness():
    assert codes(compliant(incoming_delivery=1, open_error_alerts=2)) == ["alerts_present"]
    verdict = classify(compliant(open_error_alerts=1))
    assert verdict.readiness == Readiness.COMPLIANT
    assert [blocker.as_dict()["message"] for blocker in verdict.blockers] == ["1 error alert in Dynamics 365."]


def test_every_blocker_says_what_to_do():
    facts = compliant(
        incoming_delivery=1,
        email_address="",
        email_approval=2,
        exchange_presence=ExchangePresence.NOT_IN_EXCHANGE_ONLINE,
        open_error_alerts=3,
    )
    verdict = classify(facts)
    assert [blocker.code for blocker in verdict.blockers] == [
        "no_address",
        "not_in_exchange_online",
        "address_not_approved",
        "alerts_present",
    ]
    assert all(item["message"] and item["fix"] for item in verdict.blocker_dicts())


# --- helpers ---------------------------------------------------------------------------------------------


def test_the_approval_switch_follows_the_owners_kind():
    assert approval_required(OwnerType.USER, for_users=True, for_queues=False) is True
    assert approval_required(OwnerType.QUEUE, for_users=True, for_queues=False) is False
    assert approval_required(OwnerType.NONE, for_users=False, for_queues=True) is True


def test_owner_types():
    assert owner_type_of("queue", False) == OwnerType.QUEUE
    assert owner_type_of("systemuser", False) == OwnerType.USER
    assert owner_type_of(None, True) == OwnerType.NONE
    assert owner_type_of(None, False) == OwnerType.USER
