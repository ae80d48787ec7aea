"""Forms for the platform admin's provisioning actions."""

from __future__ import annotations

from django import forms

from portal.forms import GOVUKForm


class StepDoneForm(GOVUKForm):
    """Marking a step as done by hand: the note says what was done, for the audit trail."""

    question_page = True
    submit_label = "Mark as done"

    note = forms.CharField(
        label="What did you do to complete this step?",
        help_text="For example, who approved the email address in Dynamics 365 and when. "
        "This note is kept in the audit trail.",
        widget=forms.Textarea(attrs={"rows": 5}),
        max_length=2000,
        error_messages={
            "required": "Enter what you did to complete this step",
            "max_length": "What you did must be 2,000 characters or fewer",
        },
    )

    def clean_note(self) -> str:
        note = self.cleaned_data["note"].strip()
        if not note:
            raise forms.ValidationError(self.fields["note"].error_messages["required"], code="required")
        return note
