"""The project's own code rules (scripts/check_code_rules.py) and the bandit gate, on small snippets."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_code_rules", ROOT / "scripts" / "check_code_rules.py")
rules = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("check_code_rules", rules)  # dataclasses look their module up there
_spec.loader.exec_module(rules)

FIELDS = {"status", "state"}


def findings(source: str, path: str = "onboarding/views.py") -> list[tuple[int, str]]:
    return [(f.line, f.code) for f in rules.check_source(textwrap.dedent(source), path, fields=FIELDS)]


# --- PRT001: every HTTP call has a timeout ---------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        "requests.get(url)",
        "requests.post(url, json={})",
        "requests.request('PATCH', url)",
        "session.get(url)",
        "self._session.request('GET', url, headers=headers)",
        "self.graph_session.post(url)",
        "requests.Session().get(url)",
    ],
)
def test_an_http_call_without_a_timeout_is_flagged(call):
    source = f"""
    import requests

    def fetch(self, session, url, headers):
        return {call}
    """
    assert findings(source) == [(5, "PRT001")]


def test_the_same_calls_with_a_timeout_pass():
    source = """
    import requests

    def fetch(self, session, url):
        requests.get(url, timeout=5)
        session.post(url, json={}, timeout=(3.05, 30))
        self._session.request("GET", url, timeout=self._timeout)
    """
    assert findings(source) == []


def test_calls_imported_from_requests_and_sessions_bound_to_a_name_are_checked():
    source = """
    from requests import get as fetch
    import requests

    def run(url):
        fetch(url)
        with requests.Session() as browser:
            browser.get(url)
        http = requests.Session()
        http.post(url)
        http.post(url, timeout=5)
    """
    assert findings(source) == [(6, "PRT001"), (8, "PRT001"), (10, "PRT001")]


def test_djangos_session_store_and_plain_dicts_are_not_http():
    source = """
    def view(request, client, answers):
        request.session.get("answers")
        self.request.session.get("answers")
        client.session.get("_auth_user_id")
        answers.get("name")
    """
    assert findings(source) == []


def test_forwarded_kwargs_pass_only_when_the_function_sets_the_timeout():
    source = """
    def send(self, method, url, **kwargs):
        kwargs.setdefault("timeout", self._timeout)
        return self._session.request(method, url, **kwargs)

    def send_blindly(self, method, url, **kwargs):
        return self._session.request(method, url, **kwargs)
    """
    assert findings(source) == [(7, "PRT001")]


def test_the_microsoft_365_clients_one_request_method_passes_and_is_checked():
    source = (ROOT / "portal" / "m365" / "http.py").read_text()
    assert "self._session.request(" in source
    assert rules.check_source(source, "portal/m365/http.py", fields=FIELDS) == []
    without = source.replace("timeout=self._timeout,", "")
    assert without != source
    assert [f.code for f in rules.check_source(without, "portal/m365/http.py", fields=FIELDS)] == ["PRT001"]


def test_a_line_may_opt_out_only_with_a_reason():
    source = """
    import requests

    def fetch(url):
        requests.get(url)  # code-rules: allow PRT001 the stream is closed by the caller's watchdog
        requests.get(url)  # code-rules: allow PRT001
    """
    assert findings(source) == [(6, "PRT001")]


# --- PRT002: status transitions live in services -----------------------------------------------


def test_setting_a_status_then_saving_outside_a_service_is_flagged():
    source = """
    def approve(request, pk):
        run = ProvisioningRun.objects.get(pk=pk)
        run.status = RunStatus.RUNNING
        run.note = "started by hand"
        run.save()
    """
    assert findings(source, "onboarding/views/provisioning.py") == [(6, "PRT002")]
    for path in ("migration/jobs.py", "governance/forms.py", "migration/models.py", "portal/management/commands/x.py"):
        assert findings(source, path) == [(6, "PRT002")], path


def test_other_ways_of_writing_a_status_outside_a_service_are_flagged():
    source = """
    def tidy(wave, entries):
        wave.save(update_fields=["status", "updated_at"])
        Wave.objects.filter(pk=wave.pk).update(status="running")
        wave.entries.filter(state="pending").update(state="skipped")
        WaveMailbox.objects.bulk_update(entries, ["state"])
    """
    assert findings(source, "migration/selectors/waves.py") == [
        (3, "PRT002"),
        (4, "PRT002"),
        (5, "PRT002"),
        (6, "PRT002"),
    ]


def test_services_tests_and_migrations_may_write_statuses():
    source = """
    def wave_start(*, wave_id):
        wave = Wave.objects.select_for_update().get(pk=wave_id)
        wave.status = WaveStatus.RUNNING
        wave.save(update_fields=["status"])
    """
    for path in (
        "migration/services/waves.py",
        "portal/accounts/services.py",
        "tests/migration/test_waves.py",
        "migration/migrations/0009_backfill.py",
    ):
        assert findings(source, path) == [], path


def test_reading_a_status_or_saving_other_fields_is_fine():
    source = """
    def page(request, run, facts):
        if run.status == RunStatus.FAILED:
            run.note = "seen"
            run.save(update_fields=["note"])
        facts.update(incoming_status=0)
        other = Thing()
        other.save()
    """
    assert findings(source, "onboarding/views/provisioning.py") == []


def test_status_fields_are_the_fields_with_status_or_state_choices():
    source = textwrap.dedent(
        """
        class Wave(models.Model):
            status = models.CharField(max_length=20, choices=WaveStatus.choices)
            incoming_status = models.PositiveSmallIntegerField(null=True)
            kind = models.CharField(max_length=20, choices=WaveKind.choices)

        class WaveMailbox(models.Model):
            state: str = models.CharField(max_length=20, choices=models_module.WaveMailboxState.choices)
        """
    )
    import ast

    assert rules.status_fields_in(ast.parse(source)) == {"status", "state"}
    assert rules.status_fields() >= {"status", "state"}


# --- the whole repository, and bandit ------------------------------------------------------------


def test_the_repository_keeps_its_own_rules():
    result = subprocess.run(
        [sys.executable, "scripts/check_code_rules.py"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_checker_fails_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import requests\n\n\ndef f(url):\n    return requests.get(url)\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_code_rules.py"), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"{bad.as_posix()}:5:12: PRT001" in result.stdout


def test_bandit_with_the_project_configuration_fails_on_a_high_severity_finding(tmp_path):
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "fine.py").write_text("import subprocess\n\nsubprocess.run(['ls'], check=True)\n")
    command = [sys.executable, "-m", "bandit", "-c", "pyproject.toml", "-r", ".", "-q", "--severity-level", "high"]
    assert subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=120).returncode == 0
    (tmp_path / "shell.py").write_text("import subprocess\n\n\ndef run(name):\n    subprocess.call(name, shell=True)\n")
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "B602" in result.stdout
