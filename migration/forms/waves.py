"""Wave forms: the new-wave questions, the CSV of addresses, the approval decision and small actions."""

from __future__ import annotations

from typing import Any

from crispy_forms_gds.layout import Field, Layout, Size, Submit
from django import forms
from django.core.files.uploadedfile import UploadedFile

from migration.services.waves import DESCRIPTION_MAX, MAX_CSV_BYTES, MAX_PRIORITY, NAME_MAX, NOTE_MAX
from portal.forms import Fluid, GOVUKForm

SOURCE_FILTERS = "filters"
SOURCE_CSV = "csv"


def _no_browser_maxlength(form: forms.Form) -> None:
    for field in form.fields.values():
        # A too-long answer gets an error message, not silent truncation by the browser.
        field.widget.attrs.pop("maxlength", None)
        if isinstance(field.widget, forms.Textarea):
            field.widget.attrs.setdefault("aria-describedby", "")


class WaveDetailsForm(GOVUKForm):
    submit_label = "Continue"

    name = forms.CharField(
        label="Name of the wave",
        help_text="For example, Finance queues or Router users, batch 1",
        max_length=NAME_MAX,
        error_messages={
            "required": "Enter the name of the wave",
            "max_length": f"Name must be {NAME_MAX} characters or fewer",
        },
    )
    description = forms.CharField(
        label="Description (optional)",
        required=False,
        max_length=DESCRIPTION_MAX,
        widget=forms.Textarea(attrs={"rows": 3}),
        error_messages={"max_length": f"Description must be {DESCRIPTION_MAX:,} characters or fewer"},
    )
    source = forms.ChoiceField(
        label="How do you want to choose the mailboxes?",
        choices=(
            (SOURCE_FILTERS, "From the inventory, with filters"),
            (SOURCE_CSV, "From a CSV file of email addresses"),
        ),
        widget=forms.RadioSelect,
        error_messages={"required": "Select how you want to choose the mailboxes"},
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _no_browser_maxlength(self)

    def layout_field(self, name: str, field: forms.Field) -> Any:
        if name == "source":
            return Field.radios(name, legend_size=Size.MEDIUM)
        return super().layout_field(name, field)


class WaveCSVForm(GOVUKForm):
    submit_label = "Upload and continue"

    csv_file = forms.FileField(
        label="Upload a CSV file of email addresses",
        help_text="One mailbox address a row, in the first column or a column headed Email address. "
        "Add a Priority column (0 to 1000, lower goes first) if you want. "
        f"The file must be smaller than {MAX_CSV_BYTES // 1024:,}KB.",
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,text/csv"}),
        max_length=255,
        error_messages={
            "required": "Select a CSV file",
            "empty": "The selected file is empty",
            "invalid": "The selected file could not be uploaded. Try again",
            "missing": "The selected file could not be uploaded. Try again",
            "max_length": "The selected file's name must be 255 characters or fewer",
        },
    )

    def clean_csv_file(self) -> bytes:
        upload: UploadedFile = self.cleaned_data["csv_file"]
        if upload.size is not None and upload.size > MAX_CSV_BYTES:
            raise forms.ValidationError(f"The selected file must be smaller than {MAX_CSV_BYTES // 1024:,}KB")
        if not (upload.name or "").lower().endswith((".csv", ".txt")):
            raise forms.ValidationError("The selected file must be a CSV file")
        content = upload.read(MAX_CSV_BYTES + 1)
        if not content:
            raise forms.ValidationError("The selected file is empty")
        self.file_name = upload.name or ""
        return content

    def layout_field(self, name: str, field: forms.Field) -> Any:
        return Field(name, context={"label_size": Size.for_label(Size.MEDIUM)})


class WaveDecisionForm(GOVUKForm):
    submit_label = "Record decision"

    preflight = forms.IntegerField(widget=forms.HiddenInput, error_messages={"required": "Run the pre-flight first"})
    decision = forms.ChoiceField(
        label="Do you approve this wave?",
        choices=(("approve", "Yes, approve it to start"), ("reject", "No, return it to the migration lead")),
        widget=forms.RadioSelect,
        error_messages={"required": "Select whether you approve the wave"},
    )
    note = forms.CharField(
        label="Note",
        help_text="Required when you return the wave: say what needs to change.",
        required=False,
        max_length=NOTE_MAX,
        widget=forms.Textarea(attrs={"rows": 3}),
        error_messages={"max_length": f"Note must be {NOTE_MAX:,} characters or fewer"},
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _no_browser_maxlength(self)

    def build_layout(self) -> Layout:
        return Layout(
            Field("preflight"),
            Field.radios("decision", legend_size=Size.MEDIUM),
            Field.textarea("note", label_size=Size.SMALL, rows=3),
            Submit("submit", self.submit_label),
        )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("decision") == "reject" and not (cleaned.get("note") or "").strip():
            self.add_error("note", "Enter why the wave is being returned")
        return cleaned


class PriorityForm(GOVUKForm):
    submit_label = "Save priority"
    field_widths = {"priority": 4}

    priority = forms.IntegerField(
        label="Priority",
        min_value=0,
        max_value=MAX_PRIORITY,
        error_messages={
            "required": "Enter a priority",
            "invalid": "Priority must be a whole number",
            "min_value": f"Priority must be a whole number from 0 to {MAX_PRIORITY}",
            "max_value": f"Priority must be a whole number from 0 to {MAX_PRIORITY}",
        },
    )


class CancelForm(GOVUKForm):
    submit_label = "Cancel the wave"

    reason = forms.CharField(
        label="Why are you cancelling the wave? (optional)",
        required=False,
        max_length=NOTE_MAX,
        widget=forms.Textarea(attrs={"rows": 2}),
        error_messages={"max_length": f"Reason must be {NOTE_MAX:,} characters or fewer"},
    )


__all__ = [
    "SOURCE_CSV",
    "SOURCE_FILTERS",
    "CancelForm",
    "Fluid",
    "PriorityForm",
    "WaveCSVForm",
    "WaveDecisionForm",
    "WaveDetailsForm",
]
