"""Forms for tracking-rule governance: the report's filters, a change request, and a decision on one."""

from __future__ import annotations

from typing import Any

from crispy_forms_gds.layout import Field, Layout, Size, Submit
from django import forms

from governance.models import ManagedKind
from governance.selectors.tracking import TrackingFilters
from governance.services.tracking import REASON_MAX
from portal.forms import GOVUKForm


def _no_browser_maxlength(form: forms.Form) -> None:
    # The server says "… must be N characters or fewer"; the browser would silently cut the text.
    for field in form.fields.values():
        field.widget.attrs.pop("maxlength", None)


class TrackingFilterForm(GOVUKForm):
    method = "get"
    submit_label = "Apply filters"

    kind = forms.ChoiceField(
        label="Kind of mailbox",
        required=False,
        choices=(("", "All kinds"), *ManagedKind.choices),
        error_messages={"invalid_choice": "Select a kind of mailbox from the list"},
    )
    over_tracking = forms.BooleanField(label="Over-tracking only", required=False)

    def filters(self) -> TrackingFilters:
        data = self.cleaned_data if self.is_bound and self.is_valid() else {}
        return TrackingFilters(kind=data.get("kind") or "", over_tracking_only=bool(data.get("over_tracking")))


class TrackingRequestForm(GOVUKForm):
    """The one-click request from the report: only where to come back to travels with it."""

    submit_label = "Request change"

    back = forms.CharField(required=False, widget=forms.HiddenInput, max_length=500)

    def back_query(self) -> str:
        value = self.cleaned_data.get("back", "") if self.is_valid() else ""
        # Only a query string of the report (never a URL elsewhere) is kept.
        return value if value and "/" not in value and ":" not in value else ""


class TrackingDecisionForm(GOVUKForm):
    submit_label = "Record decision"

    decision = forms.ChoiceField(
        label="Do you approve this change?",
        choices=(("approve", "Yes, approve it to be applied"), ("reject", "No, reject it")),
        widget=forms.RadioSelect,
        error_messages={"required": "Select whether you approve the change"},
    )
    reason = forms.CharField(
        label="Reason",
        help_text="Required when you reject the change: say why.",
        required=False,
        max_length=REASON_MAX,
        widget=forms.Textarea(attrs={"rows": 3}),
        error_messages={"max_length": f"Reason must be {REASON_MAX:,} characters or fewer"},
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _no_browser_maxlength(self)

    def build_layout(self) -> Layout:
        return Layout(
            Field.radios("decision", legend_size=Size.MEDIUM),
            Field.textarea("reason", label_size=Size.SMALL, rows=3),
            Submit("submit", self.submit_label),
        )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("decision") == "reject" and not (cleaned.get("reason") or "").strip():
            self.add_error("reason", "Enter why you are rejecting the change")
        return cleaned

    @property
    def approve(self) -> bool:
        return self.cleaned_data.get("decision") == "approve"
