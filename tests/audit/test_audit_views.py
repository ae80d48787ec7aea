"""The audit page and CSV export, as an auditor and as people who must be refused."""

from __future__ import annotations

import csv
import io

import pytest
from django.urls import reverse

from portal.audit.models import AuditEvent, Outcome
from portal.audit.services import audit_record


def export_rows(response) -> list[list[str]]:
    body = b"".join(response.streaming_content).decode("utf-8-sig")
    return list(csv.reader(io.StringIO(body)))


@pytest.mark.django_db
def test_auditor_sees_events_newest_first(auditor, requester, client_for):
    audit_record(actor=requester, action="test.older")
    audit_record(actor=requester, action="test.newer")
    response = client_for(auditor).get(reverse("audit:events"))
    assert response.status_code == 200
    html = response.content.decode()
    assert html.index("test.newer") < html.index("test.older")
    assert "Riya Patel (riya)" in html


@pytest.mark.django_db
@pytest.mark.parametrize("persona", ["requester", "approver", "migration_lead", "outsider"])
def test_people_without_audit_access_are_refused(persona, request, client_for):
    user = request.getfixturevalue(persona)
    client = client_for(user)
    assert client.get(reverse("audit:events")).status_code == 403
    assert client.get(reverse("audit:export")).status_code == 403
    assert client.post(reverse("audit:verify")).status_code == 403


@pytest.mark.django_db
def test_platform_admins_can_read_but_not_export(platform_admin, client_for):
    client = client_for(platform_admin)
    response = client.get(reverse("audit:events"))
    assert response.status_code == 200
    assert "Export" not in response.content.decode()
    assert client.get(reverse("audit:export")).status_code == 403


@pytest.mark.django_db
def test_signed_out_visitors_are_sent_to_sign_in(client):
    response = client.get(reverse("audit:events"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("accounts:sign_in"))


@pytest.mark.django_db
def test_filters_narrow_the_list(auditor, requester, approver, client_for):
    audit_record(actor=requester, action="auth.sign_in")
    audit_record(actor=approver, action="approval.decided", object_type="request", object_id="42")
    audit_record(actor=None, action="auth.sign_in", outcome=Outcome.FAILURE, actor_name="Anonymous")
    client = client_for(auditor)

    html = client.get(reverse("audit:events"), {"actor": "owen"}).content.decode()
    assert "<code>approval.decided</code>" in html and "<code>auth.sign_in</code>" not in html

    html = client.get(reverse("audit:events"), {"outcome": "failure"}).content.decode()
    assert "Anonymous" in html and "Riya Patel" not in html

    html = client.get(reverse("audit:events"), {"object_type": "request", "object_id": "42"}).content.decode()
    assert "<code>approval.decided</code>" in html and "<code>auth.sign_in</code>" not in html


@pytest.mark.django_db
def test_bad_filter_values_get_an_error_summary_not_a_500(auditor, client_for):
    response = client_for(auditor).get(
        reverse("audit:events"),
        {
            "date_from_0": "31",
            "date_from_1": "2",
            "date_from_2": "2026",
            "date_to_0": "1",
            "date_to_1": "1",
            "date_to_2": "99999999999999999999",
            "before": "-1",
            "after": "abc",
            "outcome": "<script>",
        },
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "There is a problem" in html
    assert "From date must be a real date" in html
    assert "To date must be a real date" in html
    assert "Select a valid choice" in html
    assert "<script>" not in html


@pytest.mark.django_db
def test_pages_go_back_through_the_trail(auditor, requester, client_for):
    for n in range(120):
        audit_record(actor=requester, action=f"test.n{n:03d}")
    client = client_for(auditor)
    first = client.get(reverse("audit:events")).content.decode()
    assert "test.n119" in first and "test.n069" not in first
    assert "before=" in first and "after=" not in first
    newest_seq_on_page_two = AuditEvent.objects.get(action="test.n069").seq + 1
    second = client.get(reverse("audit:events"), {"before": newest_seq_on_page_two}).content.decode()
    assert "test.n069" in second and "test.n070" not in second
    assert "after=" in second
    back = client.get(
        reverse("audit:events"), {"after": AuditEvent.objects.get(action="test.n069").seq}
    ).content.decode()
    assert "test.n119" in back and "test.n070" in back and "test.n069" not in back


@pytest.mark.django_db
def test_list_queries_do_not_grow_with_the_page(auditor, requester, client_for, django_assert_max_num_queries):
    client = client_for(auditor)
    audit_record(actor=requester, action="test.one")
    with django_assert_max_num_queries(12) as few:
        client.get(reverse("audit:events"))
    for n in range(60):
        audit_record(actor=requester, action=f"test.{n}")
    with django_assert_max_num_queries(len(few.captured_queries)):
        client.get(reverse("audit:events"))


@pytest.mark.django_db
def test_export_neutralises_formulas_and_is_itself_audited(auditor, requester, client_for):
    audit_record(actor=requester, action="test.formula", reason='=HYPERLINK("http://evil")')
    audit_record(actor=requester, action="test.formula", reason="+1+1")
    audit_record(actor=requester, action="test.formula", reason="-2")
    audit_record(actor=requester, action="test.formula", reason="@SUM(A1)")
    audit_record(actor=requester, action="test.formula", reason="plain")
    response = client_for(auditor).get(reverse("audit:export"), {"action": "test.formula"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = export_rows(response)
    header, data = rows[0], rows[1:]
    reasons = [row[header.index("reason")] for row in data]
    assert reasons == ['\'=HYPERLINK("http://evil")', "'+1+1", "'-2", "'@SUM(A1)", "plain"]
    assert all(row[header.index("action")] == "test.formula" for row in data)

    exported = AuditEvent.objects.filter(action="audit.exported").get()
    assert exported.actor_id == auditor.pk
    assert exported.after == {"filters": {"action": "test.formula"}}
