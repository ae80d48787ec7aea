"""``{% fragment %}``: list markup kept under a digest of the values it is drawn from.

A cached fragment must never show anything out of date: a change in any value it is drawn from,
in the template it is written in, or in who may see the page's rows, draws it again. It must
refuse values its key cannot cover, never keep a CSRF token, and carry on without the cache.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest
from django.template import Context, Engine, TemplateSyntaxError
from django.urls import reverse
from django.utils import timezone

from governance.models import AlertStatus, MailboxAlert, ManagedMailbox
from tests.factories import UserFactory

LIBRARIES = {"portal_fragments": "portal.templatetags.portal_fragments"}


@pytest.fixture
def own_keys(settings):
    """Keys of this test's own, seen by no other test (the cache outlives each test's data)."""
    settings.CACHES = {"default": {**settings.CACHES["default"], "KEY_PREFIX": f"test-{uuid.uuid4().hex}"}}


def _engine(tmp_path, source: str, name: str = "rows.html") -> Engine:
    (tmp_path / name).write_text(source)
    return Engine(dirs=[str(tmp_path)], libraries=LIBRARIES)


ROWS = (
    '{% load portal_fragments %}{% fragment "rows" rows %}'
    "{% for row in rows %}[{{ row.name }}]{% endfor %}{{ outside }}{% endfragment %}"
)


def test_the_same_values_are_served_from_the_cache_and_any_change_draws_them_again(tmp_path, own_keys):
    template = _engine(tmp_path, ROWS).get_template("rows.html")
    rows = [{"name": "Alpha", "seen": dt.datetime(2026, 11, 2, 9, 30, tzinfo=dt.UTC)}]

    assert template.render(Context({"rows": rows, "outside": "first"})) == "[Alpha]first"
    # Drawn from the same rows: the markup kept the first time comes back. (``outside`` is not
    # given to the tag, which is why a fragment may use only what it is given.)
    assert template.render(Context({"rows": rows, "outside": "second"})) == "[Alpha]first"

    renamed = [{**rows[0], "name": "Bravo"}]
    assert template.render(Context({"rows": renamed, "outside": "third"})) == "[Bravo]third"
    later = [{**rows[0], "seen": rows[0]["seen"] + dt.timedelta(seconds=1)}]
    assert template.render(Context({"rows": later, "outside": "fourth"})) == "[Alpha]fourth"


def test_a_changed_template_never_meets_markup_kept_for_the_old_one(tmp_path, own_keys):
    rows = [{"name": "Alpha"}]
    old = _engine(tmp_path, ROWS).get_template("rows.html")
    assert old.render(Context({"rows": rows, "outside": "old"})) == "[Alpha]old"

    changed = ROWS.replace("[{{ row.name }}]", "<{{ row.name }}>")
    new = _engine(tmp_path, changed).get_template("rows.html")
    assert new.render(Context({"rows": rows, "outside": "new"})) == "<Alpha>new"


def test_values_the_key_cannot_cover_are_refused(tmp_path, own_keys, db):
    template = _engine(tmp_path, ROWS).get_template("rows.html")
    person = UserFactory(username="pat")
    with pytest.raises(TypeError, match="plain data"):
        template.render(Context({"rows": [person]}))


def test_markup_with_a_csrf_token_is_never_kept(tmp_path, own_keys):
    source = (
        '{% load portal_fragments %}{% fragment "form" rows %}'
        '<input type="hidden" name="csrfmiddlewaretoken" value="{{ token }}">{% endfragment %}'
    )
    template = _engine(tmp_path, source).get_template("rows.html")
    assert "one" in template.render(Context({"rows": [1], "token": "one"}))
    assert "two" in template.render(Context({"rows": [1], "token": "two"}))


def test_without_the_cache_the_fragment_is_drawn_for_the_request(tmp_path, settings):
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:9/0"}
    }
    template = _engine(tmp_path, ROWS).get_template("rows.html")
    assert template.render(Context({"rows": [{"name": "Alpha"}], "outside": "!"})) == "[Alpha]!"


def test_the_tag_needs_a_name_and_something_to_be_drawn_from(tmp_path):
    with pytest.raises(TemplateSyntaxError, match="takes a name"):
        _engine(tmp_path, '{% load portal_fragments %}{% fragment "x" %}{% endfragment %}').get_template("rows.html")


def test_a_template_made_from_a_string_is_drawn_every_time(own_keys):
    template = Engine(libraries=LIBRARIES).from_string(ROWS)
    assert template.render(Context({"rows": [{"name": "A"}], "outside": "1"})) == "[A]1"
    assert template.render(Context({"rows": [{"name": "A"}], "outside": "2"})) == "[A]2"


# --- on a real page ------------------------------------------------------------------------------


def _benefits_mailbox() -> ManagedMailbox:
    return ManagedMailbox.objects.create(
        dataverse_id=uuid.uuid4(),
        name="Benefits enquiries",
        email_address="benefits@example.gov.uk",
        kind="shared",
        source="onboarding",
        added_at=timezone.now(),
    )


def _alert(mailbox: ManagedMailbox, code: str) -> MailboxAlert:
    now = timezone.now()
    return MailboxAlert.objects.create(
        key=str(uuid.uuid4()),
        source="dataverse",
        mailbox=mailbox,
        level=3,
        code=code,
        text="The mailbox could not be reached.",
        first_seen_at=now,
        last_seen_at=now,
        status=AlertStatus.OPEN,
        updated_at=now,
    )


@pytest.mark.django_db
def test_the_alert_queue_shows_a_change_on_the_next_request(platform_admin, client_for, own_keys):
    mailbox = _benefits_mailbox()
    alert = _alert(mailbox, "MailboxIncomingFailure")
    client = client_for(platform_admin)
    url = reverse("governance:alerts")

    first = client.get(url).content.decode()
    assert "Code MailboxIncomingFailure" in first and "govuk-tag--orange" in first
    assert _without_tokens(client.get(url).content.decode()) == _without_tokens(first)

    assignee = UserFactory(username="ayo", first_name="Ayo", last_name="Bello")
    MailboxAlert.objects.filter(pk=alert.pk).update(status=AlertStatus.ACKNOWLEDGED, assigned_to=assignee)
    mailbox.name = "Benefits enquiries (North)"
    mailbox.save(update_fields=["name"])
    _alert(mailbox, "MailboxOutgoingFailure")

    later = client.get(url).content.decode()
    assert "Acknowledged" in later and "Ayo Bello" in later
    assert "Benefits enquiries (North)" in later
    assert "Code MailboxOutgoingFailure" in later

    # Someone who may see none of these mailboxes sees none of the markup kept for them.
    outsider = UserFactory(username="nia")
    assert "Benefits enquiries" not in client_for(outsider).get(url).content.decode()


def _without_tokens(html: str) -> str:
    """The page without its CSRF tokens, which differ on every response (they are masked)."""
    return re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", html)


def test_a_setting_of_zero_draws_every_fragment_every_time(tmp_path, own_keys, settings):
    settings.PAGE_FRAGMENT_SECONDS = 0
    template = _engine(tmp_path, ROWS).get_template("rows.html")
    assert template.render(Context({"rows": [{"name": "A"}], "outside": "1"})) == "[A]1"
    assert template.render(Context({"rows": [{"name": "A"}], "outside": "2"})) == "[A]2"


def test_a_fragment_that_includes_a_template_is_drawn_again_when_that_template_changes(tmp_path, own_keys):
    source = (
        '{% load portal_fragments %}{% fragment "rows" rows %}{% include "cell.html" %}{{ outside }}{% endfragment %}'
    )
    (tmp_path / "cell.html").write_text("[old cell]")
    old = _engine(tmp_path, source).get_template("rows.html")
    assert old.render(Context({"rows": [1], "outside": "!"})) == "[old cell]!"

    (tmp_path / "cell.html").write_text("[new cell]")
    new = _engine(tmp_path, source).get_template("rows.html")
    assert new.render(Context({"rows": [1], "outside": "?"})) == "[new cell]?"


def test_a_fragment_may_not_include_a_template_named_at_run_time(tmp_path):
    source = '{% load portal_fragments %}{% fragment "rows" rows %}{% include which %}{% endfragment %}'
    with pytest.raises(TemplateSyntaxError, match="named in the template"):
        _engine(tmp_path, source).get_template("rows.html")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("who", "url", "shows"),
    [
        ("platform_admin", "migration:inventory", "Mailbox inventory"),
        ("platform_admin", "migration:dashboard", "Mailboxes by classification"),
        ("platform_admin", "governance:alerts", "Alerts to review"),
        ("platform_admin", "governance:mailboxes", "Mailboxes and volume"),
        ("platform_admin", "onboarding:approvals", "Approvals"),
        ("requester", "onboarding:requests", "Requests"),
        ("auditor", "audit:events", "Audit trail"),
    ],
)
def test_list_pages_still_answer_while_the_cache_is_unreachable(who, url, shows, request, client_for, settings):
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:9/0"}
    }
    settings.DASHBOARD_FIGURES_SECONDS = 30
    _benefits_mailbox()
    response = client_for(request.getfixturevalue(who)).get(reverse(url))
    assert response.status_code == 200
    assert shows in response.content.decode()
