"""Dataverse's organisation settings, as discovery last read them, beside what the policy expects."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from django.urls import reverse
from django.utils import timezone

from migration.models import OrganizationSnapshot, ServerProfile
from portal.policy.models import PolicySettings
from portal.policy.selectors import Comparison, dataverse_settings
from portal.policy.services import policy_get
from tests.factories import UserFactory
from tests.policy.conftest import text

pytestmark = pytest.mark.django_db

EXCHANGE_ONLINE = uuid.UUID("6f1c3a52-8d4b-4a0e-9a55-2b7de3f0c001")
ON_PREMISES = uuid.UUID("0b7e2c1d-5a4f-4e3b-8c2d-1e0f9a8b7c6d")
READ_AT = dt.datetime(2026, 3, 2, 9, 15, tzinfo=dt.UTC)


@pytest.fixture
def profiles(db):
    ServerProfile.objects.create(dataverse_id=EXCHANGE_ONLINE, name="Microsoft Exchange Online", taken_at=READ_AT)
    ServerProfile.objects.create(dataverse_id=ON_PREMISES, name="Exchange 2016 on premises", taken_at=READ_AT)


def snapshot(**values) -> OrganizationSnapshot:
    return OrganizationSnapshot.objects.create(
        pk=1,
        **{
            "name": "Department for Example Services",
            "default_profile_id": EXCHANGE_ONLINE,
            "email_connection_channel": 0,
            "require_approval_user_email": True,
            "require_approval_queue_email": True,
            "max_upload_file_size": 5 * 1024 * 1024,
            "taken_at": READ_AT,
            **values,
        },
    )


def rows() -> dict[str, Comparison]:
    found = dataverse_settings(policy_get())
    assert found is not None
    return {row.setting: row for row in found.rows}


def test_a_tenant_set_up_as_the_policy_expects_matches_everywhere(profiles):
    snapshot()
    found = rows()
    assert {setting: row.matches for setting, row in found.items()} == {
        "Process email using": True,
        "Approval of email addresses for users": True,
        "Approval of email addresses for queues": True,
        "Default email server profile": True,
    }
    assert found["Process email using"].dataverse == "Server-side synchronization"
    assert found["Default email server profile"].dataverse == f"Microsoft Exchange Online ({EXCHANGE_ONLINE})"


def test_the_email_router_and_switched_off_approval_differ(profiles):
    snapshot(email_connection_channel=1, require_approval_queue_email=False)
    found = rows()
    assert found["Process email using"].matches is False
    assert (found["Process email using"].dataverse, found["Process email using"].portal) == (
        "Email Router",
        "Server-side synchronization",
    )
    assert found["Approval of email addresses for users"].matches is True
    assert found["Approval of email addresses for queues"].matches is False


def test_approval_is_compared_with_what_the_policy_expects(profiles):
    snapshot(require_approval_user_email=False, require_approval_queue_email=False)
    PolicySettings.objects.update_or_create(pk=1, defaults={"require_email_approval": False})
    found = rows()
    assert found["Approval of email addresses for users"].matches is True
    assert found["Approval of email addresses for queues"].matches is True


def test_an_unknown_channel_is_not_called_a_difference(profiles):
    snapshot(email_connection_channel=None)
    assert rows()["Process email using"].matches is None


def test_the_default_profile_is_found_by_name_when_the_policy_has_no_id(profiles):
    snapshot(default_profile_id=ON_PREMISES)
    row = rows()["Default email server profile"]
    assert row.matches is False
    assert row.dataverse == f"Exchange 2016 on premises ({ON_PREMISES})"
    assert row.portal == f"Microsoft Exchange Online ({EXCHANGE_ONLINE})"


def test_the_policys_profile_id_wins_over_its_name(profiles):
    snapshot(default_profile_id=ON_PREMISES)
    PolicySettings.objects.update_or_create(pk=1, defaults={"exchange_online_profile_id": str(ON_PREMISES)})
    assert rows()["Default email server profile"].matches is True


def test_a_profile_name_dataverse_does_not_have_differs(profiles):
    snapshot()
    PolicySettings.objects.update_or_create(pk=1, defaults={"exchange_online_profile_name": "EXO (S2S)"})
    row = rows()["Default email server profile"]
    assert row.matches is False and row.portal == "EXO (S2S) (no profile of that name in Dataverse)"


def test_no_default_profile_differs(profiles):
    snapshot(default_profile_id=None)
    row = rows()["Default email server profile"]
    assert row.matches is False and row.dataverse == "No default profile"


def test_the_page_flags_differences_and_matches(platform_admin, client_for, profiles):
    snapshot(email_connection_channel=1)

    page = text(client_for(platform_admin).get(reverse("policy:summary")))

    table = page.split('data-testid="dataverse-comparison"', 1)[1].split("</table>", 1)[0]
    assert table.count('<strong class="govuk-tag govuk-tag--red">Differs</strong>') == 1
    assert table.count('<strong class="govuk-tag govuk-tag--green">Matches</strong>') == 3
    assert "Email Router" in table
    local = timezone.localtime(READ_AT)
    assert f'as read at <time datetime="{local.isoformat()}">{local:%-d %B %Y, %H:%M}</time>' in page
    # 90% of Dataverse's 5 MB limit.
    assert "attachments from 4,608 KB are flagged" in page


def test_before_discovery_the_page_says_to_run_it(client_for):
    both = UserFactory(username="lee", roles=["platform_admin", "migration_lead"])

    page = text(client_for(both).get(reverse("policy:summary")))

    assert "Not read yet — run discovery" in page
    assert f'href="{reverse("migration:discovery")}"' in page
    assert 'data-testid="dataverse-comparison"' not in page


def test_a_snapshot_row_without_a_reading_is_not_read_yet(platform_admin, client_for):
    # Discovery creates the row as a lock before it has read anything.
    OrganizationSnapshot.objects.create(pk=1)

    page = text(client_for(platform_admin).get(reverse("policy:summary")))

    assert "Not read yet — run discovery" in page
    assert "Ask a migration lead to run discovery" in page  # platform admins cannot start discovery


def test_the_summary_takes_a_fixed_number_of_queries(
    platform_admin, client_for, profiles, stages, django_assert_max_num_queries
):
    snapshot()
    client = client_for(platform_admin)
    client.get(reverse("policy:summary"))
    with django_assert_max_num_queries(12):
        client.get(reverse("policy:summary"))
