"""How a mailbox's email reaches Dynamics 365, and what stands between it and compliant server-side sync.

Pure functions over the facts discovery gathered, so the rules are easy to read,
test and explain. Dataverse's choice values (DESIGN 4.2): incoming/outgoing
delivery 0 None, 1 Dynamics 365 for Outlook, 2 Server-Side Sync or Email Router,
3 Forward Mailbox (incoming only); ACT delivery is numbered differently: 0 Outlook,
1 Server-Side Sync, 2 None. Test statuses 0 Not Run, 1 Success, 2 Failure. Address
approval 0 Empty, 1 Approved, 2 Pending, 3 Rejected.

The first rule that matches decides the class, in this order: disabled or no email,
Outlook client, forward mailbox, Email Router, not in Exchange Online, server-side
sync on a non-compliant profile, compliant server-side sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .models import Classification, ExchangePresence, OwnerType, Readiness

INCOMING_OUTLOOK = OUTGOING_OUTLOOK = 1
DELIVERY_SSS_OR_ROUTER = 2
INCOMING_FORWARD = 3
ACT_OUTLOOK = 0
APPROVED = 1
TEST_FAILURE = 2


@dataclass(frozen=True)
class MailboxFacts:
    email_address: str
    owner_type: str
    owner_disabled: bool
    incoming_delivery: int | None
    outgoing_delivery: int | None
    act_delivery: int | None
    email_approval: int | None
    incoming_status: int | None
    outgoing_status: int | None
    is_forward_mailbox: bool
    profile_id: str | None
    profile_is_exchange_online: bool
    profile_is_legacy: bool
    exchange_presence: str
    open_error_alerts: int = 0
    listed_by_router: bool = False
    approval_required: bool = True  # the organisation requires approval for this owner's kind


@dataclass(frozen=True)
class Blocker:
    code: str
    message: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "fix": self.fix}


@dataclass(frozen=True)
class Verdict:
    classification: str
    readiness: str
    explanation: str
    blockers: list[Blocker] = field(default_factory=list)

    def blocker_dicts(self) -> list[dict[str, str]]:
        return [blocker.as_dict() for blocker in self.blockers]


def _uses_sss_or_router(facts: MailboxFacts) -> bool:
    return DELIVERY_SSS_OR_ROUTER in (facts.incoming_delivery, facts.outgoing_delivery)


def classify(facts: MailboxFacts) -> Verdict:
    klass, why = _classification(facts)
    if klass == Classification.COMPLIANT_SSS:
        blockers = _alert_blockers(facts)
        readiness = Readiness.COMPLIANT
        return Verdict(klass, readiness, why, blockers)
    blockers = _blockers(facts, klass)
    readiness = Readiness.BLOCKED if blockers else Readiness.READY
    return Verdict(klass, readiness, why, blockers)


def _classification(facts: MailboxFacts) -> tuple[str, str]:
    incoming, outgoing, act = facts.incoming_delivery, facts.outgoing_delivery, facts.act_delivery
    if facts.owner_disabled:
        return Classification.NO_EMAIL, "The mailbox's owner is disabled in Dynamics 365, so no email is processed."
    if not facts.is_forward_mailbox and incoming in (0, None) and outgoing in (0, None):
        return Classification.NO_EMAIL, "Incoming and outgoing email are both set to None."
    if INCOMING_OUTLOOK in (incoming, outgoing) or act == ACT_OUTLOOK:
        parts = [
            name
            for name, uses in (
                ("incoming email", incoming == INCOMING_OUTLOOK),
                ("outgoing email", outgoing == OUTGOING_OUTLOOK),
                ("appointments, contacts and tasks", act == ACT_OUTLOOK),
            )
            if uses
        ]
        return (
            Classification.OUTLOOK_CLIENT,
            f"{_join(parts).capitalize()} {'is' if len(parts) == 1 else 'are'} processed by Dynamics 365 for "
            "Outlook, which only works while the person's Outlook is running.",
        )
    if facts.is_forward_mailbox or incoming == INCOMING_FORWARD:
        what = (
            "It is a forward mailbox"
            if facts.is_forward_mailbox
            else "Incoming email arrives through a forward mailbox"
        )
        return Classification.FORWARD_MAILBOX, f"{what}, a pattern from the Email Router era."
    if _uses_sss_or_router(facts) and (facts.profile_id is None or facts.profile_is_legacy):
        profile = "no email server profile" if facts.profile_id is None else "a POP3/SMTP profile"
        return (
            Classification.EMAIL_ROUTER,
            f"Email is set to 'Server-Side Synchronization or Email Router' with {profile}, so the Email Router "
            "handles it.",
        )
    if _uses_sss_or_router(facts) and facts.listed_by_router and not facts.profile_is_exchange_online:
        return Classification.EMAIL_ROUTER, "An imported Email Router configuration still serves this mailbox."
    if facts.exchange_presence in (ExchangePresence.NOT_IN_EXCHANGE_ONLINE, ExchangePresence.NOT_FOUND):
        return (
            Classification.NOT_IN_EXCHANGE_ONLINE,
            "Microsoft Graph says the mailbox is not in Exchange Online (it is on-premises, inactive or missing).",
        )
    if not facts.profile_is_exchange_online:
        return (
            Classification.SSS_WRONG_PROFILE,
            "Server-side synchronisation is bound to a profile other than the Exchange Online one.",
        )
    return (
        Classification.COMPLIANT_SSS,
        "Server-side synchronisation on the Exchange Online profile, with the mailbox in Exchange Online.",
    )


def _alert_blockers(facts: MailboxFacts) -> list[Blocker]:
    if facts.open_error_alerts:
        return [
            Blocker(
                "alerts_present",
                f"{facts.open_error_alerts} error alert{'s' if facts.open_error_alerts != 1 else ''} in Dynamics 365.",
                "Read the mailbox's alerts in Dynamics 365 and fix their cause.",
            )
        ]
    return []


def _blockers(facts: MailboxFacts, klass: str) -> list[Blocker]:
    blockers: list[Blocker] = []
    if not facts.email_address:
        blockers.append(
            Blocker("no_address", "The mailbox has no email address.", "Give the user or queue an address.")
        )
    if facts.owner_disabled:
        blockers.append(
            Blocker(
                "owner_disabled", "The owner is disabled in Dynamics 365.", "Exclude the mailbox, or enable its owner."
            )
        )
    if (
        facts.exchange_presence == ExchangePresence.UNKNOWN
        and facts.email_address
        and not facts.owner_disabled
        and klass != Classification.NO_EMAIL
    ):
        blockers.append(
            Blocker(
                "presence_unknown",
                "Nobody has checked yet whether the mailbox is in Exchange Online.",
                "Run discovery again: it asks Microsoft Graph where the mailbox is hosted.",
            )
        )
    if facts.exchange_presence == ExchangePresence.NOT_IN_EXCHANGE_ONLINE:
        blockers.append(
            Blocker(
                "not_in_exchange_online",
                "The mailbox is not in Exchange Online.",
                "Move the mailbox to Exchange Online before migrating it.",
            )
        )
    elif facts.exchange_presence == ExchangePresence.NOT_FOUND:
        blockers.append(
            Blocker(
                "not_in_directory",
                "Nobody has this address in the directory.",
                "Correct the address in Dynamics 365, or create the mailbox.",
            )
        )
    if facts.approval_required and facts.email_approval != APPROVED and klass != Classification.NO_EMAIL:
        blockers.append(
            Blocker(
                "address_not_approved",
                "The email address is not approved, and the organisation requires approval.",
                "Approve the address in Dynamics 365 (an Exchange or Global admin must do it).",
            )
        )
    blockers.extend(_alert_blockers(facts))
    return blockers


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def approval_required(owner_type: str, *, for_users: bool, for_queues: bool) -> bool:
    """Whether the organisation requires an approved address for this owner's kind of mailbox.

    Dataverse has one switch for users and one for queues; a forward mailbox is shared by
    many and follows the queue switch.
    """
    return for_users if owner_type == OwnerType.USER else for_queues


def owner_type_of(regarding_type: str | None, is_forward: bool) -> str:
    if regarding_type == "queue":
        return OwnerType.QUEUE
    if regarding_type == "systemuser":
        return OwnerType.USER
    return OwnerType.NONE if is_forward else OwnerType.USER


def facts_from_row(row: dict[str, Any], **extra: Any) -> MailboxFacts:
    """Convenience for tests: facts from a dict of the same names."""
    return MailboxFacts(**{**row, **extra})
