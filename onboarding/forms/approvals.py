"""Forms for deciding, arranging out-of-office cover, and configuring the approval stages."""

from __future__ import annotations

import re
from typing import Any

from crispy_forms.utils import TEMPLATE_PACK
from crispy_forms_gds.layout import ConditionalQuestion, ConditionalRadios, Field, Fluid, Layout, Size, Submit
from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from onboarding.models import ApproverKind, DecisionOutcome
from onboarding.services.approvals import DECIDING_ROLES, REASON_MAX_LENGTH, SLA_MAX_HOURS, STAGE_NAME_MAX_LENGTH
from portal.accounts.models import User
from portal.forms import GOVUKDateField, GOVUKForm

MAX_PEOPLE_PER_LIST = 50


class _SmallLegendConditionalRadios(ConditionalRadios):
    """Conditional radios whose legend matches the page's other small labels."""

    def render(self, form: Any, context: Any, template_pack: str = TEMPLATE_PACK, **kwargs: Any) -> str:
        with context.push(legend_size=Size.for_legend(Size.SMALL)):
            return super().render(form, context, template_pack, **kwargs)


def _person_by_email(address: str) -> User:
    """The one active person using ``address``, or a GOV.UK-style error about it."""
    people = list(User.objects.filter(email__iexact=address, is_active=True)[:2])
    if not people:
        raise ValidationError(f"Nobody using the portal has the email address {address}")
    if len(people) > 1:
        raise ValidationError(f"More than one person uses {address}. Ask a platform admin to correct their accounts")
    return people[0]


def _people_from_addresses(text: str) -> list[User]:
    addresses = [part for part in re.split(r"[\s,;]+", text or "") if part]
    if len(addresses) > MAX_PEOPLE_PER_LIST:
        raise ValidationError(f"Enter {MAX_PEOPLE_PER_LIST} email addresses or fewer")
    people: list[User] = []
    for address in addresses:
        try:
            validate_email(address)
        except ValidationError:
            raise ValidationError(
                f"{address[:80]} is not an email address. Enter addresses like name@example.gov.uk"
            ) from None
        person = _person_by_email(address)
        if person not in people:
            people.append(person)
    return people


class DecisionForm(GOVUKForm):
    submit_label = "Confirm decision"
    label_size = Size.MEDIUM

    outcome = forms.ChoiceField(
        label="What is your decision?",
        choices=DecisionOutcome.choices,
        widget=forms.RadioSelect,
        error_messages={"required": "Select whether to approve, reject or return the request"},
    )
    reason = forms.CharField(
        label="Reason",
        widget=forms.Textarea(attrs={"rows": 5}),
        required=False,
        max_length=REASON_MAX_LENGTH,
        error_messages={"max_length": f"The reason must be {REASON_MAX_LENGTH:,} characters or fewer"},
    )

    def __init__(self, *args: Any, reason_required: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["reason"].help_text = (
            "Give a reason for any decision at this stage. The requester sees it."
            if reason_required
            else "Needed if you reject the request or return it for more information. The requester sees it."
        )


class DelegationForm(GOVUKForm):
    submit_label = "Save out of office cover"
    field_widths = {"delegate_email": 20}

    delegate_email = forms.EmailField(
        label="Who will decide for you while you are away?",
        help_text="Enter the work email address of someone who can decide approvals",
        max_length=254,
        error_messages={
            "required": "Enter the email address of the person who will decide for you",
            "invalid": "Enter an email address in the correct format, like name@example.gov.uk",
        },
    )
    starts_on = GOVUKDateField(label="Start date", help_text="For example, 27 3 2026")
    ends_on = GOVUKDateField(label="End date", help_text="The last day they decide for you. For example, 3 4 2026")

    def clean_delegate_email(self) -> User:
        return _person_by_email(self.cleaned_data["delegate_email"])


class ApprovalStageForm(GOVUKForm):
    submit_label = "Save stage"
    field_widths = {"sla_hours": 5}

    name = forms.CharField(
        label="Stage name",
        help_text="Approvers and requesters see this. For example, Business owner",
        max_length=STAGE_NAME_MAX_LENGTH,
        error_messages={
            "required": "Enter the stage name",
            "max_length": f"The stage name must be {STAGE_NAME_MAX_LENGTH} characters or fewer",
        },
    )
    approver_kind = forms.ChoiceField(
        label="Who decides this stage?",
        choices=ApproverKind.choices,
        widget=forms.RadioSelect,
        error_messages={"required": "Select who decides this stage"},
    )
    role = forms.ChoiceField(
        label="Role",
        choices=[("", "Choose a role"), *((role.value, role.label) for role in DECIDING_ROLES)],
        required=False,
    )
    team_scoped = forms.BooleanField(
        label="Only people in the request's team (its members and business owners)", required=False
    )
    approvers = forms.CharField(
        label="Approvers' email addresses",
        help_text="One address per line",
        widget=forms.Textarea(attrs={"rows": 4}),
        required=False,
        max_length=20_000,
    )
    fallback_approvers = forms.CharField(
        label="Fallback approvers' email addresses (optional)",
        help_text="One address per line. They may decide once the stage is overdue, and are told when it is",
        widget=forms.Textarea(attrs={"rows": 4}),
        required=False,
        max_length=20_000,
    )
    sla_hours = forms.IntegerField(
        label="Hours to decide before the stage is overdue",
        widget=forms.TextInput(attrs={"inputmode": "numeric", "spellcheck": "false"}),
        min_value=1,
        max_value=SLA_MAX_HOURS,
        error_messages={
            "required": "Enter how many hours approvers have to decide",
            "invalid": "Enter the hours as a whole number, like 48",
            "min_value": f"The time to decide must be between 1 and {SLA_MAX_HOURS} hours",
            "max_value": f"The time to decide must be between 1 and {SLA_MAX_HOURS} hours",
        },
    )
    reason_required = forms.BooleanField(label="Approvers must give a reason even when they approve", required=False)

    def build_layout(self) -> Layout:
        return Layout(
            Field.text("name", label_size=Size.SMALL, field_width=Fluid.TWO_THIRDS),
            _SmallLegendConditionalRadios(
                "approver_kind",
                ConditionalQuestion(ApproverKind.TEAM_OWNER.label),
                ConditionalQuestion(ApproverKind.ROLE.label, Field.select("role"), Field.checkbox("team_scoped")),
                ConditionalQuestion(ApproverKind.NAMED.label, Field.textarea("approvers", rows=4)),
            ),
            Field.textarea("fallback_approvers", label_size=Size.SMALL, rows=4),
            Field.text("sla_hours", label_size=Size.SMALL, field_width=5),
            Field.checkbox("reason_required"),
            Submit("submit", self.submit_label),
        )

    def clean_approvers(self) -> list[User]:
        return _people_from_addresses(self.cleaned_data["approvers"])

    def clean_fallback_approvers(self) -> list[User]:
        return _people_from_addresses(self.cleaned_data["fallback_approvers"])

    @staticmethod
    def initial_for(stage: Any) -> dict[str, Any]:
        return {
            "name": stage.name,
            "approver_kind": stage.approver_kind,
            "role": stage.role,
            "team_scoped": stage.team_scoped,
            "approvers": "\n".join(person.email for person in stage.approvers.all()),
            "fallback_approvers": "\n".join(person.email for person in stage.fallback_approvers.all()),
            "sla_hours": stage.sla_hours,
            "reason_required": stage.reason_required,
        }


class StageMoveForm(forms.Form):
    direction = forms.ChoiceField(choices=[("up", "Up"), ("down", "Down")])
