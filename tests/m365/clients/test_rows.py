"""Dataverse rows parsed at the boundary: typed, tolerant of missing columns, strict about ids and values."""

from __future__ import annotations

import datetime as dt

import pytest

from portal.m365.errors import ResponseFormatError
from portal.m365.rows import (
    ActDeliveryMethod,
    CredentialRetrieval,
    EmailApproval,
    EmailConnectionChannel,
    EmailServerProfile,
    IncomingDeliveryMethod,
    IncomingFilteringMethod,
    Mailbox,
    Organization,
    OutgoingDeliveryMethod,
    Queue,
    QueueViewType,
    ServerType,
    SystemUser,
    TestStatus,
    TraceLevel,
    TraceLog,
)

MAILBOX_ID = "7d1e4b02-9c3a-4e1f-8b6d-5a2c9f0e4b22"
PROFILE_ID = "c3c5b0aa-1d2e-4f30-9a40-5b6c7d8e9f01"
QUEUE_ID = "0a6f2b1e-54c1-4c52-9b4f-1d6e0d7a3c11"


def test_a_mailbox_row_reads_every_column():
    mailbox = Mailbox.from_row(
        {
            "@odata.etag": 'W/"4412"',
            "mailboxid": MAILBOX_ID.upper(),
            "name": "Finance",
            "emailaddress": "finance@example.gov.uk",
            "_emailserverprofile_value": PROFILE_ID,
            "incomingemaildeliverymethod": 2,
            "outgoingemaildeliverymethod": 2,
            "actdeliverymethod": 1,
            "emailrouteraccessapproval": 1,
            "incomingemailstatus": 1,
            "outgoingemailstatus": 2,
            "actstatus": 0,
            "mailboxstatus": 2,
            "enabledforincomingemail": True,
            "enabledforoutgoingemail": False,
            "enabledforact": False,
            "testemailconfigurationscheduled": False,
            "postponetestemailconfigurationuntil": None,
            "testemailconfigurationretrycount": 3,
            "testmailboxaccesscompletedon": "2026-11-26T18:37:25Z",
            "_regardingobjectid_value": QUEUE_ID,
            "isforwardmailbox": False,
            "statecode": 0,
            "statuscode": 1,
        }
    )

    assert mailbox.id == MAILBOX_ID
    assert mailbox.etag == 'W/"4412"'
    assert mailbox.email_server_profile_id == PROFILE_ID
    assert mailbox.incoming_delivery_method is IncomingDeliveryMethod.SERVER_SIDE_SYNC_OR_EMAIL_ROUTER
    assert mailbox.outgoing_delivery_method is OutgoingDeliveryMethod.SERVER_SIDE_SYNC_OR_EMAIL_ROUTER
    assert mailbox.act_delivery_method is ActDeliveryMethod.SERVER_SIDE_SYNC
    assert mailbox.email_approval is EmailApproval.APPROVED
    assert (mailbox.incoming_status, mailbox.outgoing_status) == (TestStatus.SUCCESS, TestStatus.FAILURE)
    assert mailbox.test_completed_on == dt.datetime(2026, 11, 26, 18, 37, 25, tzinfo=dt.UTC)
    assert mailbox.test_retry_count == 3
    assert mailbox.regarding_id == QUEUE_ID


def test_appointments_contacts_and_tasks_are_numbered_differently_from_email():
    mailbox = Mailbox.from_row(
        {
            "mailboxid": MAILBOX_ID,
            "incomingemaildeliverymethod": 1,
            "outgoingemaildeliverymethod": 1,
            "actdeliverymethod": 0,
        }
    )

    assert mailbox.incoming_delivery_method is IncomingDeliveryMethod.OUTLOOK
    assert mailbox.outgoing_delivery_method is OutgoingDeliveryMethod.OUTLOOK
    assert mailbox.act_delivery_method is ActDeliveryMethod.OUTLOOK
    assert ActDeliveryMethod(2) is ActDeliveryMethod.NONE


def test_missing_optional_columns_read_as_none():
    mailbox = Mailbox.from_row({"mailboxid": MAILBOX_ID})

    assert mailbox.email_address is None
    assert mailbox.incoming_delivery_method is None
    assert mailbox.etag is None


def test_a_row_without_its_id_is_refused():
    with pytest.raises(ResponseFormatError, match="mailbox row has no mailboxid"):
        Mailbox.from_row({"emailaddress": "finance@example.gov.uk"})


def test_an_unknown_choice_value_names_the_column():
    with pytest.raises(ResponseFormatError, match=r"mailbox\.incomingemaildeliverymethod should be one of 0, 1, 2, 3"):
        Mailbox.from_row({"mailboxid": MAILBOX_ID, "incomingemaildeliverymethod": 9})


def test_a_value_of_the_wrong_type_is_refused():
    with pytest.raises(ResponseFormatError, match="enabledforincomingemail should be true or false"):
        Mailbox.from_row({"mailboxid": MAILBOX_ID, "enabledforincomingemail": "yes"})


def test_queue_user_profile_organization_and_tracelog_rows():
    queue = Queue.from_row(
        {
            "queueid": QUEUE_ID,
            "name": "Finance",
            "emailaddress": "finance@example.gov.uk",
            "queueviewtype": 1,
            "incomingemailfilteringmethod": 0,
            "_defaultmailbox_value": MAILBOX_ID,
        }
    )
    user = SystemUser.from_row(
        {
            "systemuserid": QUEUE_ID,
            "internalemailaddress": "asha@example.gov.uk",
            "azureactivedirectoryobjectid": PROFILE_ID,
            "emailrouteraccessapproval": 2,
        }
    )
    profile = EmailServerProfile.from_row(
        {
            "emailserverprofileid": PROFILE_ID,
            "name": "Microsoft Exchange Online",
            "servertype": 0,
            "incomingcredentialretrieval": 2,
            "outgoingcredentialretrieval": 7,
        }
    )
    organization = Organization.from_row(
        {
            "organizationid": QUEUE_ID,
            "_defaultemailserverprofileid_value": PROFILE_ID,
            "emailconnectionchannel": 0,
            "maxuploadfilesize": 5242880,
        }
    )
    alert = TraceLog.from_row(
        {
            "tracelogid": QUEUE_ID,
            "level": 3,
            "tracecode": 12,
            "text": "The email address is not approved.",
            "_regardingobjectid_value": MAILBOX_ID,
            "modifiedon": "2026-11-26T18:40:00Z",
        }
    )

    assert (queue.view_type, queue.incoming_filtering_method) == (
        QueueViewType.PRIVATE,
        IncomingFilteringMethod.ALL_EMAIL_MESSAGES,
    )
    assert queue.default_mailbox_id == MAILBOX_ID
    assert (user.email_approval, user.entra_object_id) == (EmailApproval.PENDING_APPROVAL, PROFILE_ID)
    assert profile.server_type is ServerType.EXCHANGE_SERVER
    assert profile.incoming_credential_retrieval is CredentialRetrieval.SERVER_TO_SERVER_AUTHENTICATION
    assert profile.outgoing_credential_retrieval is CredentialRetrieval.OAUTH
    assert organization.email_connection_channel is EmailConnectionChannel.SERVER_SIDE_SYNCHRONIZATION
    assert organization.default_email_server_profile_id == PROFILE_ID
    assert (alert.level, alert.regarding_id) == (TraceLevel.ERROR, MAILBOX_ID)


def test_every_row_type_selects_its_key_and_lookups_by_their_value_names():
    for row_type in (Mailbox, Queue, SystemUser, EmailServerProfile, Organization, TraceLog):
        assert row_type.SELECT[0] == row_type.KEY
        assert all(column == column.lower() for column in row_type.SELECT)
    assert "_emailserverprofile_value" in Mailbox.SELECT
    assert "queuetypecode" not in Queue.SELECT
