"""The requester's question pages: one form per page, holding its content and GOV.UK error messages.

Each question form knows which of the request's answers it asks (``answers``), how to
show the saved ones (``initial_for``) and what to hand the service (``changes``). The
rules that need the database or Microsoft 365 (free address, team membership, owners)
belong to the service; these forms only say whether the input is well formed.
"""

from __future__ import annotations

from typing import Any, ClassVar

from crispy_forms_gds.choices import Choice
from crispy_forms_gds.layout import Button, ConditionalQuestion, ConditionalRadios, Field, Layout, Size, Submit
from django import forms
from django.core.validators import ProhibitNullCharactersValidator

from onboarding.models import DataClassification, MailboxKind, MailboxRequest, QueueVisibility
from onboarding.selectors.mailbox_requests import allowed_domains, teams_for
from onboarding.services.mailbox_requests import (
    ALIAS_CHARACTERS_TEXT,
    ATTACHMENT_KB_MAX,
    DAILY_VOLUME_MAX,
    DISPLAY_NAME_MAX,
    EMAIL_MAX,
    JUSTIFICATION_MAX,
    LOCAL_PART_MAX,
    RETENTION_MONTHS_MAX,
    RETENTION_MONTHS_MIN,
    SAME_OWNERS,
    TICKET_REFERENCE_MAX,
    TRACKING_REASON_MAX,
    WITHDRAW_REASON_MAX,
    local_part_problem,
    text_problem,
)
from portal.accounts.models import Team, User
from portal.forms import Fixed, Fluid, GOVUKForm
from portal.policy.models import TrackingRule
from portal.policy.services import policy_get

# --- fields ------------------------------------------------------------------------------------


class PlainTextField(forms.CharField):
    """Text a person typed: no control characters or invisible direction overrides, and a bounded length."""

    checks_plain_text = True  # the base form need not check it again

    def __init__(self, *, label: str, subject: str, max_length: int, multiline: bool = False, **kwargs: Any) -> None:
        messages = {
            "required": f"Enter {subject}",
            "max_length": f"{subject[0].upper()}{subject[1:]} must be {max_length:,} characters or fewer",
        }
        messages.update(kwargs.pop("error_messages", {}))
        if multiline:
            kwargs.setdefault("widget", forms.Textarea(attrs={"rows": 6}))
        super().__init__(label=label, max_length=max_length, error_messages=messages, **kwargs)
        self.subject = subject
        self.multiline = multiline
        # One plain-English message for every hidden character, NUL included.
        self.validators = [v for v in self.validators if not isinstance(v, ProhibitNullCharactersValidator)]

    def validate(self, value: Any) -> None:
        super().validate(value)
        problem = text_problem(value or "", multiline=self.multiline)
        if problem:
            raise forms.ValidationError(f"{self.subject[0].upper()}{self.subject[1:]} {problem}", code="characters")


class WholeNumberField(forms.IntegerField):
    """A whole number typed into a GOV.UK text input; "1,200" is read as 1200."""

    def __init__(self, *, label: str, subject: str, min_value: int, max_value: int, **kwargs: Any) -> None:
        super().__init__(
            label=label,
            min_value=min_value,
            max_value=max_value,
            widget=forms.TextInput(attrs={"inputmode": "numeric", "spellcheck": "false", "autocomplete": "off"}),
            error_messages={
                "required": f"Enter {subject}",
                "invalid": f"Enter {subject} as a whole number, like 20",
                "min_value": f"{subject[0].upper()}{subject[1:]} must be {min_value:,} or more",
                "max_value": f"{subject[0].upper()}{subject[1:]} must be {max_value:,} or fewer",
            },
            **kwargs,
        )

    def to_python(self, value: Any) -> int | None:
        if isinstance(value, str):
            value = value.replace(",", "").replace(" ", "")
            if len(value) > 20:  # far past any bound; not worth converting
                raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        return super().to_python(value)


class PortalUserEmailField(forms.EmailField):
    """A person with an active portal account, chosen by their email address."""

    def __init__(self, *, label: str, who: str, **kwargs: Any) -> None:
        super().__init__(
            label=label,
            max_length=EMAIL_MAX,
            error_messages={
                "required": f"Enter the {who}'s email address",
                "invalid": f"Enter the {who}'s email address in the correct format, like name@example.gov.uk",
                "max_length": f"The {who}'s email address must be {EMAIL_MAX} characters or fewer",
            },
            widget=forms.EmailInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
            **kwargs,
        )
        self.who = who

    def clean(self, value: Any) -> User:
        email = super().clean(value)
        people = list(User.objects.filter(email__iexact=email).order_by("-is_active", "pk")[:2])
        if not people:
            raise forms.ValidationError(
                f"There is no portal account with that email address. Enter the {self.who}'s work email address",
                code="unknown",
            )
        if len(people) > 1 and people[1].is_active:
            raise forms.ValidationError(
                "More than one portal account uses that email address. Ask your platform team to correct it",
                code="ambiguous",
            )
        if not people[0].is_active:
            raise forms.ValidationError(
                f"That person's portal account is not active. Enter the email address of another {self.who}",
                code="inactive",
            )
        return people[0]


def _without_maxlength(field: forms.Field) -> None:
    # A too-long answer gets an error message, not silent truncation by the browser.
    field.widget.attrs.pop("maxlength", None)
    if isinstance(field.widget, forms.Textarea):
        # The pack's character count appends to this attribute and fails when a field has no hint.
        field.widget.attrs.setdefault("aria-describedby", "")


class _LegendRadios(ConditionalRadios):
    """Conditional radios whose fieldset legend is the page's H1, like every other question page."""

    def __init__(self, field: str, *choices: Any, legend_size: str, legend_tag: str | None) -> None:
        super().__init__(field, *choices)
        self.legend = {"legend_size": Size.for_legend(legend_size), "legend_tag": legend_tag}

    def render(self, form: Any, context: Any, template_pack: Any = None, **kwargs: Any) -> str:
        with context.push(**self.legend):
            return super().render(form, context, template_pack=template_pack or "gds", **kwargs)


# --- the question pages ------------------------------------------------------------------------


class QuestionForm(GOVUKForm):
    """A page of the request: "Save and continue", or save and leave it for later."""

    submit_label = "Save and continue"
    secondary_submit = ("save_later", "Save and come back later")
    # Pages that ask several things show this as their H1; a question page's H1 is its label.
    heading: ClassVar[str] = ""
    # The request's answers this page asks for, named as the service names them.
    answers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *args: Any, actor: User, **kwargs: Any) -> None:
        self.actor = actor
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            _without_maxlength(field)

    def build_layout(self) -> Layout:
        self.prepare_fields()
        return super().build_layout()

    def prepare_fields(self) -> None:
        """Adjust fields to the person and the policy before the layout is built."""

    def layout_field(self, name: str, field: forms.Field) -> Any:
        if isinstance(field.widget, forms.Textarea) and getattr(field, "max_length", None):
            size = Size.LARGE if self.question_page else self.label_size
            return Field.textarea(
                name,
                label_size=size,
                label_tag="h1" if self.question_page else None,
                rows=6,
                max_characters=field.max_length,
            )
        return super().layout_field(name, field)

    @property
    def title(self) -> str:
        return self.heading or str(next(iter(self.fields.values())).label)

    @classmethod
    def initial_for(cls, request: MailboxRequest) -> dict[str, Any]:
        return {name: getattr(request, name) for name in cls.answers}

    def changes(self) -> dict[str, Any]:
        return {name: self.cleaned_data[name] for name in self.answers}

    def only_answers_missing(self) -> bool:
        """Every problem is an answer not given yet, which "Save and come back later" allows."""
        return all(error.code == "required" for errors in self.errors.as_data().values() for error in errors)

    def answers_given(self) -> dict[str, Any]:
        """The answers that passed, for saving a page left part-done."""
        data = getattr(self, "cleaned_data", {})
        return {name: data[name] for name in self.answers if name in data and name not in self.errors}


class KindForm(QuestionForm):
    question_page = True
    answers = ("kind",)

    kind = forms.ChoiceField(
        label="What kind of mailbox does your team need?",
        choices=[
            Choice(
                MailboxKind.SHARED.value,
                "Shared mailbox",
                hint="A team inbox in Outlook that several people read and send from, using one address. "
                "It is not connected to Dynamics 365.",
            ),
            Choice(
                MailboxKind.QUEUE.value,
                "Queue mailbox",
                hint="A shared mailbox that is also a queue in Dynamics 365. Email sent to it arrives in the "
                "queue through server-side synchronisation, so your team can work on it in Dynamics 365 as well "
                "as in Outlook.",
            ),
        ],
        widget=forms.RadioSelect,
        error_messages={"required": "Select the kind of mailbox", "invalid_choice": "Select the kind of mailbox"},
    )


class DisplayNameForm(QuestionForm):
    question_page = True
    answers = ("display_name",)
    field_widths = {"display_name": Fluid.TWO_THIRDS}

    display_name = PlainTextField(
        label="What should the mailbox be called?",
        subject="a name for the mailbox",
        max_length=DISPLAY_NAME_MAX,
        help_text="People see this name in Outlook and, for a queue, in Dynamics 365. For example, Finance enquiries.",
        error_messages={"max_length": f"The name must be {DISPLAY_NAME_MAX} characters or fewer"},
    )

    def clean_display_name(self) -> str:
        return " ".join(self.cleaned_data["display_name"].split())


class AddressForm(QuestionForm):
    heading = "What email address should the mailbox have?"
    answers = ("local_part", "domain")
    field_widths = {"local_part": 20}

    local_part = forms.CharField(
        label="Part before the @",
        max_length=LOCAL_PART_MAX,
        help_text=f"For example, finance-enquiries. Use {ALIAS_CHARACTERS_TEXT} only.",
        error_messages={
            "required": "Enter the first part of the email address",
            "max_length": f"The first part of the email address must be {LOCAL_PART_MAX} characters or fewer",
        },
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false", "autocapitalize": "none"}),
    )
    domain = forms.ChoiceField(
        label="Domain",
        choices=[],
        widget=forms.RadioSelect,
        error_messages={"required": "Select a domain", "invalid_choice": "Select a domain from the list"},
    )

    def prepare_fields(self) -> None:
        domains = allowed_domains()
        field = self.fields["domain"]
        field.choices = [(domain, f"@{domain}") for domain in domains]
        if len(domains) > 5:
            field.widget = forms.Select(choices=field.choices)
        if len(domains) == 1 and not self.initial.get("domain"):
            self.initial["domain"] = domains[0]

    def clean_local_part(self) -> str:
        value = self.cleaned_data["local_part"].strip().lower()
        if "@" in value:
            raise forms.ValidationError("Enter only the part of the address before the @", code="at_sign")
        problem = local_part_problem(value)
        if problem:
            raise forms.ValidationError(problem, code="alias")
        return value


class TeamForm(QuestionForm):
    question_page = True
    answers = ("team",)

    team = forms.ModelChoiceField(
        label="Which team will own the mailbox?",
        help_text="The team's business owners are asked to approve the request.",
        queryset=Team.objects.none(),
        empty_label=None,
        widget=forms.RadioSelect,
        error_messages={
            "required": "Select the team that will own the mailbox",
            "invalid_choice": "Select one of your teams",
        },
    )

    def prepare_fields(self) -> None:
        self.fields["team"].queryset = teams_for(self.actor).order_by("name")

    @classmethod
    def initial_for(cls, request: MailboxRequest) -> dict[str, Any]:
        return {"team": request.team_id}


class OwnersForm(QuestionForm):
    heading = "Who is responsible for the mailbox?"
    answers = ("owner", "backup_owner")
    field_widths = {"owner": Fluid.TWO_THIRDS, "backup_owner": Fluid.TWO_THIRDS}

    owner = PortalUserEmailField(
        label="Accountable owner's email address",
        who="accountable owner",
        help_text="The person accountable for the mailbox and the information in it. They need a portal account.",
    )
    backup_owner = PortalUserEmailField(
        label="Backup owner's email address",
        who="backup owner",
        help_text="Someone who can act for the accountable owner when they are away. It must be a different person.",
    )

    @classmethod
    def initial_for(cls, request: MailboxRequest) -> dict[str, Any]:
        return {
            "owner": request.owner.email if request.owner else "",
            "backup_owner": request.backup_owner.email if request.backup_owner else "",
        }

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        owner, backup = cleaned.get("owner"), cleaned.get("backup_owner")
        if owner is not None and backup is not None and owner.pk == backup.pk:
            self.add_error("backup_owner", SAME_OWNERS)
        return cleaned


MEMBER_PERMISSIONS = [
    Choice("full_access", "Full access", hint="Read, move and delete the email in the mailbox."),
    Choice(
        "automapping",
        "Show the mailbox in their Outlook automatically",
        hint="Only with full access. Outlook adds the mailbox for them (auto-mapping).",
    ),
    Choice("send_as", "Send as", hint="Send email that appears to come from the mailbox itself."),
    Choice("send_on_behalf", "Send on behalf", hint="Send email that shows it was sent on behalf of the mailbox."),
]


class AddMemberForm(GOVUKForm):
    submit_label = "Add member"
    field_widths = {"email": Fluid.TWO_THIRDS}

    email = forms.EmailField(
        label="Email address",
        max_length=EMAIL_MAX,
        help_text="Their work email address, for example sam.jones@example.gov.uk.",
        error_messages={
            "required": "Enter the member's email address",
            "invalid": "Enter the member's email address in the correct format, like name@example.gov.uk",
            "max_length": f"The email address must be {EMAIL_MAX} characters or fewer",
        },
        widget=forms.EmailInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    permissions = forms.MultipleChoiceField(
        label="What can they do?",
        choices=MEMBER_PERMISSIONS,
        widget=forms.CheckboxSelectMultiple,
        error_messages={
            "required": "Select at least one permission",
            "invalid_choice": "Select permissions from the list",
        },
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("initial", {"permissions": ["full_access", "automapping"]})
        super().__init__(*args, **kwargs)
        _without_maxlength(self.fields["email"])

    def build_layout(self) -> Layout:
        # "Add another": the page's own button carries on, so adding is the secondary action.
        return Layout(
            *(self.layout_field(name, field) for name, field in self.fields.items()),
            Button.secondary("add", self.submit_label),
        )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        granted = set(cleaned.get("permissions") or ())
        if "automapping" in granted and "full_access" not in granted:
            self.add_error("permissions", "Select full access to show the mailbox in their Outlook automatically")
        elif granted == {"automapping"}:
            self.add_error("permissions", "Select at least one permission")
        return cleaned

    def member(self) -> dict[str, Any]:
        granted = set(self.cleaned_data["permissions"])
        return {
            "email": self.cleaned_data["email"].strip().lower(),
            **{name: name in granted for name, _ in MEMBER_PERMISSIONS},
        }


class QueueVisibilityForm(QuestionForm):
    question_page = True
    answers = ("queue_visibility",)

    queue_visibility = forms.TypedChoiceField(
        label="Who should see the queue in Dynamics 365?",
        coerce=int,
        choices=[
            Choice(
                QueueVisibility.PUBLIC.value,
                "Everyone in the organisation (public)",
                hint="Anyone with access to Dynamics 365 can see the queue and the email in it.",
            ),
            Choice(
                QueueVisibility.PRIVATE.value,
                "Only the queue's members (private)",
                hint="Only people added to the queue in Dynamics 365 can see it.",
            ),
        ],
        widget=forms.RadioSelect,
        error_messages={
            "required": "Select whether the queue is public or private",
            "invalid_choice": "Select whether the queue is public or private",
        },
    )


TRACKING_HINTS = {
    TrackingRule.ALL: "Every message that reaches the mailbox is saved in Dynamics 365, including newsletters, "
    "automatic replies and personal email. This over-tracks, so you must say why the queue needs it.",
    TrackingRule.RESPONSES: "Only replies to email that was sent from Dynamics 365.",
    TrackingRule.LEADS_CONTACTS_ACCOUNTS: "Only email from people who are already leads, contacts or accounts "
    "in Dynamics 365.",
    TrackingRule.EMAIL_ENABLED_RECORDS: "Only email from anyone held in a Dynamics 365 record that has an email "
    "address, such as contacts, accounts, leads and users.",
    TrackingRule.NONE: "Nothing is saved in Dynamics 365 automatically. People track messages one by one.",
}


class TrackingForm(QuestionForm):
    question_page = True
    answers = ("tracking_rule", "tracking_reason")

    tracking_rule = forms.TypedChoiceField(
        label="Which email messages should Dynamics 365 track?",
        coerce=int,
        choices=[],
        widget=forms.RadioSelect,
        error_messages={
            "required": "Select which email messages the queue tracks",
            "invalid_choice": "Select which email messages the queue tracks",
        },
    )
    tracking_reason = PlainTextField(
        label="Why does the queue need to track all email messages?",
        subject="why the queue needs to track all email messages",
        max_length=TRACKING_REASON_MAX,
        multiline=True,
        required=False,
        error_messages={"max_length": f"The reason must be {TRACKING_REASON_MAX:,} characters or fewer"},
    )

    def prepare_fields(self) -> None:
        recommended = policy_get().default_tracking_rule_queue
        self.fields["tracking_rule"].choices = [
            Choice(
                rule.value,
                rule.label,
                hint=TRACKING_HINTS[rule] + (" This is the recommended choice." if rule == recommended else ""),
            )
            for rule in TrackingRule
        ]
        if self.initial.get("tracking_rule") is None:
            self.initial["tracking_rule"] = recommended

    def build_layout(self) -> Layout:
        self.prepare_fields()
        conditional = ConditionalQuestion(
            TrackingRule.ALL.label,
            Field.textarea("tracking_reason", label_size=Size.SMALL, rows=4, max_characters=TRACKING_REASON_MAX),
        )
        others = [rule.label for rule in TrackingRule if rule != TrackingRule.ALL]
        return Layout(
            _LegendRadios("tracking_rule", conditional, *others, legend_size=Size.LARGE, legend_tag="h1"),
            Submit("submit", self.submit_label),
            Button.secondary(*self.secondary_submit),
        )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("tracking_rule") == TrackingRule.ALL:
            if not cleaned.get("tracking_reason") and "tracking_reason" not in self.errors:
                self.add_error("tracking_reason", "Enter why the queue needs to track all email messages")
        else:
            cleaned["tracking_reason"] = ""
        return cleaned


class UsageForm(QuestionForm):
    heading = "How will the mailbox be used?"
    answers = ("expected_daily_volume", "typical_attachment_kb", "retention_months", "data_classification")
    field_widths = {"expected_daily_volume": Fixed.TEN, "typical_attachment_kb": Fixed.TEN, "retention_months": 5}

    expected_daily_volume = WholeNumberField(
        label="How many email messages do you expect each day?",
        subject="how many email messages you expect each day",
        min_value=0,
        max_value=DAILY_VOLUME_MAX,
        help_text="An estimate is fine.",
    )
    typical_attachment_kb = WholeNumberField(
        label="Typical size of an attachment, in kilobytes (KB)",
        subject="the typical size of an attachment",
        min_value=0,
        max_value=ATTACHMENT_KB_MAX,
        help_text="1 MB is 1,024 KB. Enter 0 if messages rarely have attachments.",
    )
    retention_months = WholeNumberField(
        label="How many months should email be kept?",
        subject="how many months email is kept",
        min_value=RETENTION_MONTHS_MIN,
        max_value=RETENTION_MONTHS_MAX,
        help_text="Follow your team's retention schedule.",
    )
    data_classification = forms.ChoiceField(
        label="What is the highest classification of information the mailbox will hold?",
        choices=[
            Choice(
                DataClassification.OFFICIAL.value,
                DataClassification.OFFICIAL.label,
                hint="Routine business information.",
            ),
            Choice(
                DataClassification.OFFICIAL_SENSITIVE.value,
                DataClassification.OFFICIAL_SENSITIVE.label,
                hint="Information that would cause harm if it were lost or shared by mistake, such as personal "
                "data about members of the public.",
            ),
        ],
        widget=forms.RadioSelect,
        error_messages={
            "required": "Select the data classification",
            "invalid_choice": "Select the data classification",
        },
    )


class JustificationForm(QuestionForm):
    heading = "Why does your team need this mailbox?"
    answers = ("justification", "ticket_reference")
    field_widths = {"ticket_reference": 20}

    justification = PlainTextField(
        label="Business justification",
        subject="why your team needs this mailbox",
        max_length=JUSTIFICATION_MAX,
        multiline=True,
        help_text="Say who will write to the mailbox, what your team will do with the email, and why an existing "
        "mailbox will not do.",
        error_messages={"max_length": f"The justification must be {JUSTIFICATION_MAX:,} characters or fewer"},
    )
    ticket_reference = PlainTextField(
        label="Ticket reference (optional)",
        subject="the ticket reference",
        max_length=TICKET_REFERENCE_MAX,
        required=False,
        help_text="If this request started as a service desk ticket, its number. For example, INC0012345.",
    )


class WithdrawForm(GOVUKForm):
    reason = PlainTextField(
        label="Why are you withdrawing the request? (optional)",
        subject="the reason",
        max_length=WITHDRAW_REASON_MAX,
        multiline=True,
        required=False,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _without_maxlength(self.fields["reason"])

    def build_layout(self) -> Layout:
        return Layout(
            Field.textarea("reason", label_size=Size.SMALL, rows=4, max_characters=WITHDRAW_REASON_MAX),
            Button.warning("withdraw", "Withdraw request"),
        )
