"""Who may reach every URL of the portal, proved by calling each one as every role.

``MATRIX`` is the contract: for each URL pattern and method, what an anonymous visitor, an
outsider (no roles) and each role get when the URL names someone else's object (another team's
request, stage, delegation, mailbox, alert or tracking change; a wave, source or window another
lead or admin made). ``OWN_OBJECTS`` proves the other direction: the same pages answer the
people whose objects they are. A URL pattern without a row here fails the suite by name.

Answers: ``LOGIN`` is a redirect to the sign-in page; 403 is a signed-in person without the
permission; 404 an object that exists but is not theirs to see (or a switched-off page); 405 a
method the view refuses. A refused answer never shows another team's or the estate's objects,
and a refused POST changes no table and queues nothing. Only platform admins and auditors are
ever shown another team's objects.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.urls import reverse

from tests.security.access_fixtures import (
    ANONYMOUS,
    OWN,
    OWN_DRAFT,
    OWN_QUEUE,
    OWN_SUBMITTED,
    PERSONAS,
    SEE_EVERY_TEAM,
    THEIR_TEAM,
    THEIRS,
    call,
    client_as,
    goes_to_sign_in,
    markers_in,
    persona_clients,
    url_names,
    world_for_module,
)

pytestmark = pytest.mark.django_db

GET, POST = "GET", "POST"
LOGIN = "sign-in"
COLUMNS = (ANONYMOUS, *PERSONAS)
REFUSED = (LOGIN, 403, 404, 405)

# Pages anyone may open without signing in. Every other URL sends anonymous visitors to sign in
# (or refuses the method first).
PUBLIC = {
    "accessibility",
    "cookies",
    "accounts:sign_in",
    "accounts:sign_out",
    "accounts:signed_out",
    # Sign-in with Microsoft is switched off in these settings, so its pages do not exist (404);
    # tests/accounts/test_entra_sign_in.py covers them switched on.
    "accounts:entra_start",
    "accounts:entra_callback",
}
# Liveness and readiness probes answer in middleware, before URL resolution.
PROBES = ("/healthz", "/readyz")

# A POST row means the view accepts POST: tests/security/test_csrf_and_methods.py holds every such
# URL to CSRF checks. Pages that only read and take no method decorator answer POST like GET.
# fmt: off
MATRIX: dict[tuple[str, str], tuple[Any, ...]] = {
    # (url name, method):                          anonymous outsider requester approver admin lead auditor
    ("home", GET):                                   (LOGIN, 200, 200, 200, 200, 200, 200),
    ("platform", GET):                               (LOGIN, 403, 403, 403, 200, 403, 403),
    ("accessibility", GET):                          (200,   200, 200, 200, 200, 200, 200),
    ("cookies", GET):                                (200,   200, 200, 200, 200, 200, 200),
    # Signed-in people are sent on from the sign-in page; an empty form is shown again with errors.
    ("accounts:sign_in", GET):                       (200,   302, 302, 302, 302, 302, 302),
    ("accounts:sign_in", POST):                      (200,   200, 200, 200, 200, 200, 200),
    ("accounts:sign_out", GET):                      (LOGIN, 200, 200, 200, 200, 200, 200),
    ("accounts:sign_out", POST):                     (302,   302, 302, 302, 302, 302, 302),
    ("accounts:signed_out", GET):                    (200,   200, 200, 200, 200, 200, 200),
    ("accounts:entra_start", GET):                   (404,   404, 404, 404, 404, 404, 404),
    ("accounts:entra_start", POST):                  (404,   404, 404, 404, 404, 404, 404),
    ("accounts:entra_callback", GET):                (404,   404, 404, 404, 404, 404, 404),
    ("accounts:entra_callback", POST):               (404,   404, 404, 404, 404, 404, 404),
    # --- the audit trail: admins and auditors read it; only auditors export and check it ---
    ("audit:events", GET):                           (LOGIN, 403, 403, 403, 200, 403, 200),
    ("audit:export", GET):                           (LOGIN, 403, 403, 403, 403, 403, 200),
    ("audit:verify", GET):                           (405,   405, 405, 405, 405, 405, 405),
    ("audit:verify", POST):                          (LOGIN, 403, 403, 403, 403, 403, 302),
    # --- requests: another team's request is invisible (404) to everyone but platform admins ---
    ("onboarding:requests", GET):                    (LOGIN, 403, 200, 403, 403, 403, 403),
    ("onboarding:request_start", GET):               (LOGIN, 403, 200, 403, 403, 403, 403),
    ("onboarding:request_start", POST):              (LOGIN, 403, 200, 403, 403, 403, 403),
    ("onboarding:request_detail", GET):              (LOGIN, 404, 404, 404, 200, 404, 404),
    ("onboarding:request_continue", GET):            (LOGIN, 403, 404, 403, 403, 403, 403),
    ("onboarding:request_question", GET):            (LOGIN, 403, 404, 403, 403, 403, 403),
    ("onboarding:request_question", POST):           (LOGIN, 403, 404, 403, 403, 403, 403),
    ("onboarding:request_members", GET):             (LOGIN, 403, 404, 403, 403, 403, 403),
    ("onboarding:request_members", POST):            (LOGIN, 403, 404, 403, 403, 403, 403),
    ("onboarding:request_member_remove", GET):       (LOGIN, 403, 404, 403, 403, 403, 403),
    ("onboarding:request_member_remove", POST):      (LOGIN, 403, 404, 403, 403, 403, 403),
    ("onboarding:request_check", GET):               (LOGIN, 403, 404, 403, 403, 403, 403),
    ("onboarding:request_check", POST):              (LOGIN, 403, 404, 403, 403, 403, 403),
    ("onboarding:request_submitted", GET):           (LOGIN, 403, 404, 403, 403, 403, 403),
    ("onboarding:request_withdraw", GET):            (LOGIN, 403, 404, 403, 403, 403, 403),
    ("onboarding:request_withdraw", POST):           (LOGIN, 403, 404, 403, 403, 403, 403),
    # --- approvals: a stage or cover arrangement of someone else's is a 404 to approvers ---
    ("onboarding:approvals", GET):                   (LOGIN, 403, 403, 200, 200, 403, 403),
    ("onboarding:out_of_office", GET):               (LOGIN, 403, 403, 200, 200, 403, 403),
    ("onboarding:out_of_office", POST):              (LOGIN, 403, 403, 200, 200, 403, 403),
    ("onboarding:out_of_office_cancel", GET):        (405,   405, 405, 405, 405, 405, 405),
    ("onboarding:out_of_office_cancel", POST):       (LOGIN, 403, 403, 404, 404, 403, 403),
    ("onboarding:approval_decision", GET):           (LOGIN, 403, 403, 404, 404, 403, 403),
    ("onboarding:approval_decision", POST):          (LOGIN, 403, 403, 404, 404, 403, 403),
    # --- platform admins: the approval route and provisioning ---
    ("onboarding:approval_stages", GET):             (LOGIN, 403, 403, 403, 200, 403, 403),
    ("onboarding:approval_stage_add", GET):          (LOGIN, 403, 403, 403, 200, 403, 403),
    ("onboarding:approval_stage_add", POST):         (LOGIN, 403, 403, 403, 200, 403, 403),
    ("onboarding:approval_stage_change", GET):       (LOGIN, 403, 403, 403, 200, 403, 403),
    ("onboarding:approval_stage_change", POST):      (LOGIN, 403, 403, 403, 200, 403, 403),
    ("onboarding:approval_stage_move", GET):         (405,   405, 405, 405, 405, 405, 405),
    ("onboarding:approval_stage_move", POST):        (LOGIN, 403, 403, 403, 302, 403, 403),
    ("onboarding:approval_stage_deactivate", GET):   (LOGIN, 403, 403, 403, 200, 403, 403),
    ("onboarding:approval_stage_deactivate", POST):  (LOGIN, 403, 403, 403, 302, 403, 403),
    ("onboarding:approval_stage_activate", GET):     (405,   405, 405, 405, 405, 405, 405),
    ("onboarding:approval_stage_activate", POST):    (LOGIN, 403, 403, 403, 302, 403, 403),
    ("onboarding:provisioning_runs", GET):           (LOGIN, 403, 403, 403, 200, 403, 403),
    ("onboarding:provisioning_run", GET):            (LOGIN, 403, 403, 403, 200, 403, 403),
    ("onboarding:provisioning_step_retry", GET):     (405,   405, 405, 405, 405, 405, 405),
    ("onboarding:provisioning_step_retry", POST):    (LOGIN, 403, 403, 403, 302, 403, 403),
    ("onboarding:provisioning_step_done", GET):      (LOGIN, 403, 403, 403, 200, 403, 403),
    ("onboarding:provisioning_step_done", POST):     (LOGIN, 403, 403, 403, 200, 403, 403),
    # --- migration: leads work every wave and source; admins read the inventory, waves and plans ---
    ("migration:dashboard", GET):                    (LOGIN, 403, 403, 403, 200, 200, 403),
    ("migration:discovery", GET):                    (LOGIN, 403, 403, 403, 403, 200, 403),
    ("migration:discovery_sync", GET):               (405,   405, 405, 405, 405, 405, 405),
    ("migration:discovery_sync", POST):              (LOGIN, 403, 403, 403, 403, 400, 403),
    ("migration:inventory", GET):                    (LOGIN, 403, 403, 403, 200, 200, 403),
    ("migration:inventory_export", GET):             (LOGIN, 403, 403, 403, 200, 200, 403),
    ("migration:inventory_mailbox", GET):            (LOGIN, 403, 403, 403, 200, 200, 403),
    ("migration:legacy_sources", GET):               (LOGIN, 403, 403, 403, 403, 200, 403),
    ("migration:legacy_source_router_add", GET):     (LOGIN, 403, 403, 403, 403, 200, 403),
    ("migration:legacy_source_router_add", POST):    (LOGIN, 403, 403, 403, 403, 200, 403),
    ("migration:legacy_source", GET):                (LOGIN, 403, 403, 403, 403, 200, 403),
    ("migration:router_import", GET):                (LOGIN, 403, 403, 403, 403, 200, 403),
    ("migration:annotations", GET):                  (LOGIN, 403, 403, 403, 403, 200, 403),
    ("migration:annotations", POST):                 (LOGIN, 403, 403, 403, 403, 200, 403),
    ("migration:annotations_export", GET):           (LOGIN, 403, 403, 403, 403, 200, 403),
    ("migration:annotation_edit", GET):              (LOGIN, 403, 403, 403, 403, 200, 403),
    ("migration:annotation_edit", POST):             (LOGIN, 403, 403, 403, 403, 200, 403),
    ("migration:waves", GET):                        (LOGIN, 403, 403, 403, 200, 200, 403),
    ("migration:wave_new", GET):                     (LOGIN, 403, 403, 403, 403, 200, 403),
    ("migration:wave_new", POST):                    (LOGIN, 403, 403, 403, 403, 200, 403),
    # Without the answers of the first question a lead is sent back to it.
    ("migration:wave_new_filters", GET):             (LOGIN, 403, 403, 403, 403, 302, 403),
    ("migration:wave_new_filters", POST):            (LOGIN, 403, 403, 403, 403, 302, 403),
    ("migration:wave_new_upload", GET):              (LOGIN, 403, 403, 403, 403, 302, 403),
    ("migration:wave_new_upload", POST):             (LOGIN, 403, 403, 403, 403, 302, 403),
    ("migration:wave_new_check", GET):               (LOGIN, 403, 403, 403, 403, 302, 403),
    ("migration:wave_new_check", POST):              (LOGIN, 403, 403, 403, 403, 302, 403),
    ("migration:wave", GET):                         (LOGIN, 403, 403, 403, 200, 200, 403),
    ("migration:wave_progress", GET):                (LOGIN, 403, 403, 403, 200, 200, 403),
    ("migration:wave_decide", GET):                  (405,   405, 405, 405, 405, 405, 405),
    ("migration:wave_decide", POST):                 (LOGIN, 403, 403, 403, 400, 403, 403),
    ("migration:wave_action", GET):                  (405,   405, 405, 405, 405, 405, 405),
    ("migration:wave_action", POST):                 (LOGIN, 403, 403, 403, 403, 302, 403),
    ("migration:wave_mailbox_rollback", GET):        (405,   405, 405, 405, 405, 405, 405),
    ("migration:wave_mailbox_rollback", POST):       (LOGIN, 403, 403, 403, 403, 302, 403),
    ("migration:wave_mailbox_priority", GET):        (405,   405, 405, 405, 405, 405, 405),
    ("migration:wave_mailbox_priority", POST):       (LOGIN, 403, 403, 403, 403, 302, 403),
    ("migration:wave_preflight", GET):               (LOGIN, 403, 403, 403, 200, 200, 403),
    ("migration:wave_preflight_export", GET):        (LOGIN, 403, 403, 403, 200, 200, 403),
    ("migration:decommission", GET):                 (LOGIN, 403, 403, 403, 200, 200, 403),
    ("migration:decommission_outlook_sync", GET):    (405,   405, 405, 405, 405, 405, 405),
    ("migration:decommission_outlook_sync", POST):   (LOGIN, 403, 403, 403, 403, 302, 403),
    ("migration:decommission_org_check", GET):       (405,   405, 405, 405, 405, 405, 405),
    ("migration:decommission_org_check", POST):      (LOGIN, 403, 403, 403, 403, 302, 403),
    ("migration:decommission_plan", GET):            (LOGIN, 403, 403, 403, 200, 200, 403),
    ("migration:decommission_plan_start", GET):      (405,   405, 405, 405, 405, 405, 405),
    ("migration:decommission_plan_start", POST):     (LOGIN, 403, 403, 403, 403, 302, 403),
    ("migration:decommission_plan_details", GET):    (LOGIN, 403, 403, 403, 403, 200, 403),
    ("migration:decommission_plan_details", POST):   (LOGIN, 403, 403, 403, 403, 302, 403),
    ("migration:decommission_sign_off", GET):        (405,   405, 405, 405, 405, 405, 405),
    ("migration:decommission_sign_off", POST):       (LOGIN, 403, 403, 403, 403, 400, 403),
    ("migration:decommission_item", GET):            (LOGIN, 403, 403, 403, 403, 200, 403),
    ("migration:decommission_item", POST):           (LOGIN, 403, 403, 403, 403, 400, 403),
    ("migration:decommission_evidence", GET):        (LOGIN, 403, 403, 403, 200, 200, 403),
    # --- policy: platform admins only ---
    ("policy:summary", GET):                         (LOGIN, 403, 403, 403, 200, 403, 403),
    ("policy:blackout_add", GET):                    (LOGIN, 403, 403, 403, 200, 403, 403),
    ("policy:blackout_add", POST):                   (LOGIN, 403, 403, 403, 200, 403, 403),
    ("policy:blackout_remove", GET):                 (LOGIN, 403, 403, 403, 200, 403, 403),
    ("policy:blackout_remove", POST):                (LOGIN, 403, 403, 403, 200, 403, 403),
    ("policy:section_change", GET):                  (LOGIN, 403, 403, 403, 200, 403, 403),
    ("policy:section_change", POST):                 (LOGIN, 403, 403, 403, 200, 403, 403),
    # --- mailbox health: everyone signed in sees the lists of what they own; admins see all ---
    ("governance:alerts", GET):                      (LOGIN, 200, 200, 200, 200, 200, 200),
    ("governance:alert", GET):                       (LOGIN, 404, 404, 404, 200, 404, 404),
    ("governance:alert", POST):                      (LOGIN, 404, 404, 404, 200, 404, 404),
    ("governance:health_sync", GET):                 (405,   405, 405, 405, 405, 405, 405),
    ("governance:health_sync", POST):                (LOGIN, 403, 403, 403, 302, 403, 403),
    ("governance:mailboxes", GET):                   (LOGIN, 200, 200, 200, 200, 200, 200),
    ("governance:mailbox", GET):                     (LOGIN, 404, 404, 404, 200, 404, 404),
    ("governance:team", GET):                        (LOGIN, 404, 404, 404, 200, 404, 404),
    ("governance:retention", GET):                   (LOGIN, 200, 200, 200, 200, 200, 200),
    # Tracking pages are for admins and owners of a managed mailbox (the requester owns one).
    ("governance:tracking_report", GET):             (LOGIN, 403, 200, 403, 200, 403, 403),
    ("governance:tracking_request", GET):            (405,   405, 405, 405, 405, 405, 405),
    # The service refuses a mailbox that is not the owner's (and one with a change open) with a
    # message on the report page.
    ("governance:tracking_request", POST):           (LOGIN, 403, 404, 403, 400, 403, 403),
    ("governance:tracking_changes", GET):            (LOGIN, 403, 200, 403, 200, 403, 403),
    ("governance:tracking_change", GET):             (LOGIN, 403, 404, 403, 200, 403, 403),
    ("governance:tracking_change_decide", GET):      (405,   405, 405, 405, 405, 405, 405),
    ("governance:tracking_change_decide", POST):     (LOGIN, 403, 404, 403, 400, 403, 403),
    ("governance:tracking_change_retry", GET):       (405,   405, 405, 405, 405, 405, 405),
    ("governance:tracking_change_retry", POST):      (LOGIN, 403, 404, 403, 400, 403, 403),
}
# fmt: on

# The personas' own objects: the pages that answer 404 above answer their owners.
# (persona, url name, method, expected answer, text the answer shows)
OWN_OBJECTS: tuple[tuple[str, str, str, Any, str], ...] = (
    ("requester", "onboarding:request_detail", GET, 200, OWN_SUBMITTED),
    ("requester", "onboarding:request_continue", GET, 302, ""),
    ("requester", "onboarding:request_question", GET, 200, OWN_DRAFT),
    ("requester", "onboarding:request_question", POST, 200, "Enter"),
    ("requester", "onboarding:request_members", GET, 200, "own.member@example.gov.uk"),
    ("requester", "onboarding:request_members", POST, 200, "own.member@example.gov.uk"),
    ("requester", "onboarding:request_member_remove", GET, 200, "own.member@example.gov.uk"),
    ("requester", "onboarding:request_member_remove", POST, 302, ""),
    ("requester", "onboarding:request_check", GET, 200, OWN_DRAFT),
    ("requester", "onboarding:request_check", POST, 302, ""),
    ("requester", "onboarding:request_submitted", GET, 200, ""),
    ("requester", "onboarding:request_withdraw", GET, 200, ""),
    ("requester", "onboarding:request_withdraw", POST, 302, ""),
    ("requester", "governance:alert", GET, 200, OWN_QUEUE),
    ("requester", "governance:alert", POST, 200, OWN_QUEUE),
    ("requester", "governance:mailbox", GET, 200, OWN_QUEUE),
    ("requester", "governance:tracking_change", GET, 200, OWN_QUEUE),
    ("approver", "onboarding:request_detail", GET, 200, OWN_SUBMITTED),
    ("approver", "onboarding:approval_decision", GET, 200, OWN_SUBMITTED),
    ("approver", "onboarding:approval_decision", POST, 200, OWN_SUBMITTED),
    ("approver", "onboarding:out_of_office_cancel", POST, 302, ""),
    ("approver", "governance:alert", GET, 200, OWN_QUEUE),
    ("approver", "governance:mailbox", GET, 200, OWN_QUEUE),
    ("approver", "governance:team", GET, 200, OWN_QUEUE),
)

# Lists that show each person what is theirs.
OWN_IN_LISTS: tuple[tuple[str, str, str], ...] = (
    ("requester", "onboarding:requests", OWN_DRAFT),
    ("approver", "onboarding:approvals", OWN_SUBMITTED),
    ("requester", "governance:alerts", OWN_QUEUE),
    ("approver", "governance:alerts", OWN_QUEUE),
    ("requester", "governance:mailboxes", OWN_QUEUE),
    ("requester", "governance:retention", OWN_QUEUE),
    ("requester", "governance:tracking_report", OWN_QUEUE),
    ("requester", "governance:tracking_changes", OWN_QUEUE),
)


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker):
    with world_for_module(django_db_blocker) as built:
        yield built


@pytest.fixture(scope="module")
def clients(world):
    return persona_clients(world)


def matrix_names() -> set[str]:
    return {name for name, _method in MATRIX}


def post_names() -> set[str]:
    """Every URL whose view accepts POST, according to the matrix."""
    return {name for name, method in MATRIX if method == POST}


def _answer(outcome) -> Any:
    return LOGIN if goes_to_sign_in(outcome) else outcome.status


def _check(name: str, method: str, persona: str, expected: Any, outcome, problems: list[str]) -> None:
    where = f"{method} {name} as {persona}"
    got = _answer(outcome)
    if outcome.status >= 500:
        problems.append(f"{where}: server error {outcome.status}")
    if got != expected:
        problems.append(f"{where}: expected {expected}, got {got} {outcome.location}".rstrip())
    shown = markers_in(outcome)
    if (expected in REFUSED or got in REFUSED) and shown:
        problems.append(f"{where}: shows other people's objects ({', '.join(shown)}) to someone refused")
    if persona not in SEE_EVERY_TEAM and THEIR_TEAM.lower() in shown:
        problems.append(f"{where}: shows another team's objects")
    if method == POST and expected in REFUSED:
        if outcome.changed:
            problems.append(f"{where}: the refused POST changed {', '.join(outcome.changed)}")
        if outcome.queued:
            problems.append(f"{where}: the refused POST queued {outcome.queued} piece(s) of work")


# --- the matrix covers every URL -----------------------------------------------------------------


def test_every_url_pattern_has_a_row_in_the_matrix():
    routes = url_names()
    missing = sorted(f"{name} ({routes[name]})" for name in set(routes) - matrix_names())
    assert not missing, "URL patterns with no row in the access matrix: " + "; ".join(missing)
    stale = sorted(matrix_names() - set(routes))
    assert not stale, "Matrix rows for URL patterns that no longer exist: " + ", ".join(stale)
    unreachable = sorted(set(routes) - set(THEIRS))
    assert not unreachable, "URL patterns the matrix cannot build a URL for: " + ", ".join(unreachable)
    without_get = sorted(name for name in matrix_names() if (name, GET) not in MATRIX)
    assert not without_get, "Matrix rows without a GET row: " + ", ".join(without_get)


def test_only_public_pages_answer_signed_out_visitors():
    for (name, method), row in MATRIX.items():
        anonymous = row[COLUMNS.index(ANONYMOUS)]
        if name not in PUBLIC and method == GET:
            assert anonymous in (LOGIN, 405), f"{name} answers signed-out visitors {anonymous} but is not public"


# --- every URL, every role ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(matrix_names()))
def test_access(name, world, clients):
    url = reverse(name, kwargs=THEIRS[name](world))
    problems: list[str] = []
    for method in (GET, POST):
        row = MATRIX.get((name, method))
        if row is None:
            continue
        for persona, expected in zip(COLUMNS, row, strict=True):
            # Signing out ends the shared client's session, so it gets a client of its own.
            client = client_as(world, persona) if name == "accounts:sign_out" else clients[persona]
            outcome = call(client, method, url, watch=method == POST and expected in REFUSED)
            _check(name, method, persona, expected, outcome, problems)
    assert not problems, f"{url}:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("persona", "name", "method", "expected", "shows"),
    OWN_OBJECTS,
    ids=[f"{persona}-{method}-{name}" for persona, name, method, _, _ in OWN_OBJECTS],
)
def test_own_objects_answer_their_owners(persona, name, method, expected, shows, world, clients):
    assert name in OWN, f"no own object to reach {name} with"
    their_row = MATRIX[(name, method)]
    assert their_row[COLUMNS.index(persona)] in REFUSED, "the matrix should refuse someone else's object"

    outcome = call(clients[persona], method, reverse(name, kwargs=OWN[name](world)), watch=method == POST)

    problems: list[str] = []
    _check(name, method, persona, expected, outcome, problems)
    assert not problems, "\n".join(problems)
    assert shows in outcome.body
    if method == POST and expected == 302:
        # The owner's action went through, so the write detector the refusals rely on saw it.
        assert outcome.changed


@pytest.mark.parametrize(
    ("persona", "name", "shows"), OWN_IN_LISTS, ids=[f"{persona}-{name}" for persona, name, _ in OWN_IN_LISTS]
)
def test_lists_show_people_what_is_theirs_and_nothing_of_another_team(persona, name, shows, world, clients):
    outcome = call(clients[persona], GET, reverse(name))

    assert outcome.status == 200
    assert shows in outcome.body
    assert THEIR_TEAM.lower() not in outcome.body.lower()


@pytest.mark.parametrize("path", PROBES)
def test_health_probes_are_public_and_say_nothing_else(path, world, clients):
    for persona in (ANONYMOUS, "outsider"):
        outcome = call(clients[persona], GET, path)
        # Readiness may say "unavailable" on a starved machine; it still answers anyone, in full.
        assert outcome.status in ((200, 503) if path == "/readyz" else (200,)), (persona, outcome.status)
        assert set(json.loads(outcome.body)) <= {"status", "checks"}
