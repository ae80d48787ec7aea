"""Decommission forms: a plan's owner and due date, one checklist item with its evidence, and sign-off."""

from __future__ import annotations

from typing import Any

from crispy_forms_gds.layout import Field, Size
from django import forms
from django.core.files.uploadedfile import UploadedFile

from migration.services.decommission import EVIDENCE_NOTE_MAX, EVIDENCE_TYPES_TEXT, MAX_EVIDENCE_BYTES
from portal.forms import GOVUKDateField, GOVUKForm

SIGN_OFF_NOTE_MAX = 2000
NOBODY = ""


class PlanDetailsForm(GOVUKForm):
    submit_label = "Save owner and due date"

    owner = forms.ChoiceField(
        label="Owner",
        help_text="The person responsible for switching this source off.",
        required=False,
    )
    due_date = GOVUKDateField(
        label="Due date",
        help_text="When it should be switched off, for example 27 3 2027. Leave it blank if there is none yet.",
        required=False,
    )

    def __init__(self, *args: Any, owners: list[tuple[int, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["owner"].choices = [(NOBODY, "Nobody yet"), *((str(pk), name) for pk, name in owners)]
        self.fields["owner"].error_messages["invalid_choice"] = "Select the owner from the list"

    def clean_owner(self) -> int | None:
        value = self.cleaned_data.get("owner") or NOBODY
        return int(value) if value != NOBODY else None


class EvidenceFileField(forms.FileField):
    """An optional evidence file of at most 10MB; cleans to ``(file name, bytes)``. The service sniffs its type."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            label="Evidence file (optional)",
            help_text=f"For example a screenshot or a change record. It must be {EVIDENCE_TYPES_TEXT}, "
            f"smaller than {MAX_EVIDENCE_BYTES // (1024 * 1024)}MB.",
            required=False,
            max_length=255,
            widget=forms.ClearableFileInput(attrs={"accept": ".pdf,.png,.jpg,.jpeg,.txt,.csv"}),
            error_messages={
                "empty": "The selected file is empty",
                "invalid": "The selected file could not be uploaded. Try again",
                "missing": "The selected file could not be uploaded. Try again",
                "max_length": "The selected file's name must be 255 characters or fewer",
            },
            **kwargs,
        )

    def clean(self, data: Any, initial: Any = None) -> tuple[str, bytes] | None:
        upload: UploadedFile | None = super().clean(data, initial)
        if not upload:
            return None
        if upload.size is not None and upload.size > MAX_EVIDENCE_BYTES:
            raise forms.ValidationError("The selected file must be smaller than 10MB", code="too_big")
        content = upload.read(MAX_EVIDENCE_BYTES + 1)
        if not content:
            raise forms.ValidationError("The selected file is empty", code="empty")
        if len(content) > MAX_EVIDENCE_BYTES:
            raise forms.ValidationError("The selected file must be smaller than 10MB", code="too_big")
        return upload.name or "", content


class ChecklistItemForm(GOVUKForm):
    submit_label = "Save"

    done = forms.ChoiceField(
        label="Is this done?",
        choices=[("yes", "Yes"), ("no", "No")],
        widget=forms.RadioSelect,
        error_messages={"required": "Select yes if this is done"},
    )
    evidence_note = forms.CharField(
        label="Evidence note",
        help_text="How you know: who did it, when, and where the record is.",
        required=False,
        max_length=EVIDENCE_NOTE_MAX,
        widget=forms.Textarea(attrs={"rows": 4}),
        error_messages={"max_length": f"The evidence note must be {EVIDENCE_NOTE_MAX:,} characters or fewer"},
    )
    evidence_file = EvidenceFileField()

    def layout_field(self, name: str, field: forms.Field) -> Any:
        if isinstance(field, forms.FileField):
            return Field(name, context={"label_size": Size.for_label(Size.SMALL)})
        if name == "done":
            return Field.radios(name, legend_size=Size.MEDIUM, inline=True)
        return super().layout_field(name, field)


class SignOffForm(GOVUKForm):
    submit_label = "Sign off decommissioning"

    note = forms.CharField(
        label="Sign-off note (optional)",
        required=False,
        max_length=SIGN_OFF_NOTE_MAX,
        widget=forms.Textarea(attrs={"rows": 3}),
        error_messages={"max_length": f"The sign-off note must be {SIGN_OFF_NOTE_MAX:,} characters or fewer"},
    )
