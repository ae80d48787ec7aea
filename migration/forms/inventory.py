"""The inventory list's filter form: GET parameters in, validated filters out."""

from __future__ import annotations

from typing import Any

from django import forms
from django.forms.utils import flatatt
from django.utils.html import format_html, format_html_join

from migration.models import Classification, OwnerType, Readiness
from migration.selectors.inventory import (
    BLANK,
    DEFAULT_SORT,
    SEARCH_MAX_LENGTH,
    SORT_CHOICES,
    InventoryFilters,
)
from portal.forms import GOVUKForm


class Select(forms.Select):
    """Django's select with its options written out directly instead of through one template each.

    The team list can run to hundreds of options, and rendering each through a
    template costs more than the rest of the page. Named ``Select`` so the GOV.UK
    template pack gives it its ``govuk-select`` class, as it does Django's own.
    """

    def render(self, name: str, value: Any, attrs: dict | None = None, renderer: Any = None) -> str:
        selected = set(self.format_value(value))
        options = format_html_join(
            "",
            '<option value="{}"{}>{}</option>',
            ((key, " selected" if str(key) in selected else "", label) for key, label in self.choices),
        )
        return format_html(
            "<select{}>{}</select>", flatatt(self.build_attrs(self.attrs, {**(attrs or {}), "name": name})), options
        )


def _choice(label: str, *, any_label: str, choices: list[tuple[str, str]], error: str) -> forms.ChoiceField:
    return forms.ChoiceField(
        label=label,
        required=False,
        choices=[("", any_label), *choices],
        widget=Select,
        error_messages={"invalid_choice": error},
    )


class InventoryFilterForm(GOVUKForm):
    method = "get"
    submit_label = "Apply filters"
    field_widths = {"q": 30}

    q = forms.CharField(
        label="Name or email address",
        required=False,
        max_length=SEARCH_MAX_LENGTH,
        help_text="Part of a name or an address",
        error_messages={"max_length": f"Name or email address must be {SEARCH_MAX_LENGTH} characters or fewer"},
    )
    classification = _choice(
        "Classification",
        any_label="Any classification",
        choices=Classification.choices,
        error="Select a classification from the list",
    )
    readiness = _choice(
        "Readiness", any_label="Any readiness", choices=Readiness.choices, error="Select a readiness from the list"
    )
    team = _choice("Team", any_label="Any team", choices=[], error="Select a team from the list")
    business_unit = _choice(
        "Business unit", any_label="Any business unit", choices=[], error="Select a business unit from the list"
    )
    legacy_source = _choice(
        "Legacy source", any_label="Any or none", choices=[], error="Select a legacy source from the list"
    )
    owner_type = _choice(
        "Owner type", any_label="Any owner type", choices=OwnerType.choices, error="Select an owner type from the list"
    )
    include_removed = forms.BooleanField(label="Include mailboxes removed from Dynamics 365", required=False)
    sort = forms.ChoiceField(
        label="Sort by",
        required=False,
        choices=SORT_CHOICES,
        widget=Select,
        error_messages={"invalid_choice": "Select a sort order from the list"},
    )

    def __init__(
        self,
        data: Any = None,
        *,
        teams: list[str],
        business_units: list[str],
        legacy_sources: list[tuple[int, str]],
        **kwargs: Any,
    ) -> None:
        super().__init__(data, **kwargs)
        self.fields["team"].choices = [("", "Any team"), (BLANK, "No team"), *((name, name) for name in teams if name)]
        self.fields["business_unit"].choices = [
            ("", "Any business unit"),
            (BLANK, "No business unit"),
            *((name, name) for name in business_units if name),
        ]
        self.fields["legacy_source"].choices = [
            ("", "Any or none"),
            *((str(source_id), name) for source_id, name in legacy_sources),
        ]

    def _valid(self) -> dict[str, Any]:
        """The fields that passed validation; a bad field is left out, not guessed at."""
        data = self.cleaned_data if hasattr(self, "cleaned_data") else {}
        return {name: value for name, value in data.items() if name not in self.errors and value not in ("", None)}

    def filters(self) -> InventoryFilters:
        valid = self._valid()
        valid.pop("sort", None)
        if "legacy_source" in valid:
            valid["legacy_source"] = int(valid["legacy_source"])
        return InventoryFilters(**valid)

    def chosen_sort(self) -> str:
        return self._valid().get("sort") or DEFAULT_SORT
