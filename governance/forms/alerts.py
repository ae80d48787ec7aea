"""Alert review forms: who works on an alert, and how it was resolved."""

from __future__ import annotations

from typing import Any

from django import forms

from governance.services.alerts import RESOLUTION_NOTE_MAX
from portal.forms import GOVUKForm

NOBODY = ""


class AlertAssignForm(GOVUKForm):
    submit_label = "Assign"

    action = forms.CharField(widget=forms.HiddenInput, initial="assign", required=False)
    assignee = forms.ChoiceField(label="Who is working on it", required=False)

    def __init__(self, *args: Any, people: list[tuple[int, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["assignee"].choices = [(NOBODY, "Nobody"), *((str(pk), name) for pk, name in people)]
        self.fields["assignee"].error_messages["invalid_choice"] = "Select a person from the list"

    def clean_assignee(self) -> int | None:
        value = self.cleaned_data.get("assignee") or NOBODY
        return int(value) if value != NOBODY else None


class AlertResolveForm(GOVUKForm):
    submit_label = "Resolve alert"

    action = forms.CharField(widget=forms.HiddenInput, initial="resolve", required=False)
    note = forms.CharField(
        label="What was done",
        help_text="For example: re-entered the mailbox's credentials and ran Test & Enable again.",
        max_length=RESOLUTION_NOTE_MAX,
        widget=forms.Textarea(attrs={"rows": 3}),
        error_messages={
            "required": "Enter what was done to resolve the alert",
            "max_length": f"What was done must be {RESOLUTION_NOTE_MAX} characters or fewer",
        },
    )


class AlertFilterForm(GOVUKForm):
    method = "get"
    submit_label = "Apply filters"

    status = forms.ChoiceField(
        label="Status",
        required=False,
        choices=[("open", "Open or acknowledged"), ("resolved", "Resolved"), ("all", "All")],
    )
    level = forms.ChoiceField(
        label="Level", required=False, choices=[("", "Errors and warnings"), ("3", "Errors"), ("2", "Warnings")]
    )
    mine = forms.BooleanField(label="Only alerts assigned to me", required=False)
