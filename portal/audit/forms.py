from __future__ import annotations

from django import forms

from portal.forms import GOVUKDateField, GOVUKForm

from .models import Outcome
from .selectors import AuditFilters


class AuditFilterForm(GOVUKForm):
    method = "get"
    submit_label = "Apply filters"
    field_widths = {"actor": 20, "action": 20, "object_type": 20, "object_id": 20}

    actor = forms.CharField(label="Person", required=False, max_length=150, help_text="Part of a name or username")
    action = forms.CharField(
        label="Action", required=False, max_length=100, help_text="For example, auth.sign_in or audit"
    )
    object_type = forms.CharField(label="Object type", required=False, max_length=100, help_text="For example, user")
    object_id = forms.CharField(label="Object id", required=False, max_length=100)
    outcome = forms.ChoiceField(label="Outcome", required=False, choices=[("", "Any outcome"), *Outcome.choices])
    date_from = GOVUKDateField(label="From date", required=False, help_text="For example, 27 3 2026")
    date_to = GOVUKDateField(label="To date", required=False, help_text="For example, 28 3 2026")

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("date_from"), cleaned.get("date_to")
        if start and end and end < start:
            self.add_error("date_to", "To date must be the same as or after the from date")
        return cleaned

    def filters(self) -> AuditFilters:
        """The filters that passed validation; a bad field is ignored, not guessed at."""
        data = self.cleaned_data if hasattr(self, "cleaned_data") else {}
        valid = {name: value for name, value in data.items() if name not in self.errors and value not in ("", None)}
        return AuditFilters(**valid)
