"""Annotation forms: one mailbox's annotation, and a CSV file of many."""

from __future__ import annotations

from typing import Any

from crispy_forms_gds.layout import ConditionalQuestion, ConditionalRadios, Field, Layout, Size, Submit
from django import forms
from django.core.files.uploadedfile import UploadedFile

from migration.services.annotations import (
    EXCLUSION_REASON_MAX,
    MAX_CSV_BYTES,
    NOTES_MAX,
    OWNER_CORRECTION_MAX,
    AnnotationValues,
    annotation_problems,
)
from portal.forms import Fluid, GOVUKForm


class AnnotationCSVForm(GOVUKForm):
    submit_label = "Upload and apply"

    csv_file = forms.FileField(
        label="Upload a CSV file of annotations",
        help_text="Use the columns of the export. Every row is checked before anything is saved. "
        f"The file must be smaller than {MAX_CSV_BYTES // (1024 * 1024)}MB.",
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
            raise forms.ValidationError(
                f"The selected file must be smaller than {MAX_CSV_BYTES // (1024 * 1024)}MB", code="too_big"
            )
        if not (upload.name or "").lower().endswith((".csv", ".txt")):
            raise forms.ValidationError("The selected file must be a CSV file", code="wrong_type")
        content = upload.read(MAX_CSV_BYTES + 1)
        if not content:
            raise forms.ValidationError("The selected file is empty", code="empty")
        return content

    def layout_field(self, name: str, field: forms.Field) -> Any:
        return Field(name, context={"label_size": Size.for_label(Size.MEDIUM)})


class AnnotationForm(GOVUKForm):
    """One mailbox's annotation; the rules are the service's, shared with the CSV import."""

    submit_label = "Save annotation"

    owner_correction = forms.CharField(
        label="Owner correction",
        help_text="Only if Dynamics 365 names the wrong owner: who really owns this mailbox, "
        "for example their email address.",
        required=False,
        max_length=OWNER_CORRECTION_MAX,
        strip=True,
        error_messages={"max_length": f"Owner correction must be {OWNER_CORRECTION_MAX:,} characters or fewer"},
    )
    notes = forms.CharField(
        label="Notes",
        help_text="Anything the migration team should know about this mailbox.",
        required=False,
        max_length=NOTES_MAX,
        widget=forms.Textarea(attrs={"rows": 5}),
        error_messages={"max_length": f"Notes must be {NOTES_MAX:,} characters or fewer"},
    )
    excluded = forms.ChoiceField(
        label="Is this mailbox left out of migration on purpose?",
        choices=(("yes", "Yes"), ("no", "No")),
        widget=forms.RadioSelect,
        error_messages={"required": "Select yes if this mailbox is left out of migration on purpose"},
    )
    exclusion_reason = forms.CharField(
        label="Why is it left out?",
        required=False,
        max_length=EXCLUSION_REASON_MAX,
        widget=forms.Textarea(attrs={"rows": 3}),
        error_messages={"max_length": f"Exclusion reason must be {EXCLUSION_REASON_MAX:,} characters or fewer"},
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            # A too-long answer gets an error message, not silent truncation by the browser.
            field.widget.attrs.pop("maxlength", None)
            if isinstance(field.widget, forms.Textarea):
                # The pack's character count appends to this attribute and fails when a field has no hint.
                field.widget.attrs.setdefault("aria-describedby", "")

    @classmethod
    def initial_for(cls, values: AnnotationValues) -> dict[str, Any]:
        return {
            "owner_correction": values.owner_correction,
            "notes": values.notes,
            "excluded": "yes" if values.excluded else "no",
            "exclusion_reason": values.exclusion_reason,
        }

    def build_layout(self) -> Layout:
        reason_field = Field.textarea(
            "exclusion_reason", label_size=Size.SMALL, rows=3, max_characters=EXCLUSION_REASON_MAX
        )
        reason = ConditionalQuestion("Yes", reason_field)
        radios = ConditionalRadios("excluded", reason, "No")
        return Layout(
            Field.text("owner_correction", label_size=Size.SMALL, field_width=Fluid.TWO_THIRDS),
            Field.textarea("notes", label_size=Size.SMALL, rows=5, max_characters=NOTES_MAX),
            radios,
            Submit("submit", self.submit_label),
        )

    def values(self) -> AnnotationValues:
        data = self.cleaned_data
        excluded = data.get("excluded") == "yes"
        return AnnotationValues(
            owner_correction=data.get("owner_correction", "").strip(),
            notes=data.get("notes", "").strip(),
            excluded=excluded,
            # A reason typed and then hidden by choosing "No" is not kept.
            exclusion_reason=data.get("exclusion_reason", "").strip() if excluded else "",
        )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if not self.errors:
            for field, message in annotation_problems(self.values()):
                self.add_error(field, message)
        return cleaned
