"""The base form builds GOV.UK layouts from class attributes."""

from __future__ import annotations

import datetime as dt

from django import forms
from django.template import Context, Template

from portal.forms import GOVUKDateField, GOVUKForm


def render(form) -> str:
    return Template("{% load crispy_forms_tags %}{% crispy form %}").render(Context({"form": form}))


class TeamNameQuestion(GOVUKForm):
    question_page = True
    submit_label = "Save and continue"
    name = forms.CharField(label="What is the team called?", error_messages={"required": "Enter the team name"})


class MailboxKindQuestion(GOVUKForm):
    question_page = True
    kind = forms.ChoiceField(
        label="What kind of mailbox do you need?",
        choices=[("shared", "Shared mailbox"), ("queue", "Queue mailbox")],
        widget=forms.RadioSelect,
        error_messages={"required": "Select the kind of mailbox"},
    )


class DetailsForm(GOVUKForm):
    owner = forms.CharField(label="Accountable owner")
    notes = forms.CharField(label="Notes", widget=forms.Textarea, required=False)
    starts = GOVUKDateField(label="Start date", required=False)


def test_a_question_page_makes_the_label_the_h1():
    html = render(TeamNameQuestion())
    assert '<h1 class="govuk-label-wrapper">' in html
    assert "govuk-label--l" in html
    assert 'value="Save and continue"' in html
    assert "novalidate" in html


def test_radios_sit_in_a_fieldset_whose_legend_is_the_h1():
    html = render(MailboxKindQuestion())
    assert '<fieldset class="govuk-fieldset"' in html
    assert "govuk-fieldset__legend--l" in html
    assert '<h1 class="govuk-fieldset__heading">' in html
    assert "govuk-radios__input" in html


def test_errors_use_the_messages_the_form_declares():
    form = TeamNameQuestion(data={"name": ""})
    assert not form.is_valid()
    html = render(form)
    assert "govuk-form-group--error" in html
    assert "Enter the team name" in html


def test_multi_field_forms_use_small_labels_and_no_h1():
    html = render(DetailsForm())
    assert "<h1" not in html
    assert "govuk-label--s" in html
    assert "govuk-textarea" in html
    assert "govuk-date-input" in html


def test_dates_are_checked_for_reality_without_crashing():
    ok = DetailsForm(data={"owner": "x", "starts_0": "29", "starts_1": "2", "starts_2": "2028"})
    assert ok.is_valid() and ok.cleaned_data["starts"] == dt.date(2028, 2, 29)
    for day, month, year in [("30", "2", "2026"), ("1", "1", "9" * 30), ("x", "1", "2026"), ("1", "", "2026")]:
        form = DetailsForm(data={"owner": "x", "starts_0": day, "starts_1": month, "starts_2": year})
        assert not form.is_valid()
        assert "starts" in form.errors
