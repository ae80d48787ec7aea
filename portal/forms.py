"""The one base form every portal form builds on.

Concrete forms declare fields, GOV.UK-style error messages and a few class
attributes; :class:`GOVUKForm` turns them into a crispy-forms-gds layout:

* ``question_page = True``: the page asks one question, so that field's label
  (or, for radios and checkboxes, the fieldset legend) is the page's H1.
* ``submit_label``: the button text ("Continue", "Save and continue" ...).
* ``field_widths``: ``{"name": Fluid.TWO_THIRDS}`` or a fixed character width.
* ``method = "get"`` for filter forms that change the URL, not the data.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from typing import Any, ClassVar

from crispy_forms_gds.fields import DateInputField
from crispy_forms_gds.helper import FormHelper
from crispy_forms_gds.layout import Button, Field, Fixed, Fluid, Layout, Size, Submit
from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import ProhibitNullCharactersValidator


class GOVUKDateField(DateInputField):
    """GOV.UK date input (day, month, year) that never lets an impossible date escape as a 500."""

    def __init__(self, *, label: str, help_text: str = "", required: bool = True, **kwargs: Any) -> None:
        super().__init__(label=label, help_text=help_text, required=required, require_all_fields=False, **kwargs)
        self.error_messages["required"] = f"Enter {label.lower()}"
        self.error_messages["incomplete"] = f"{label} must include a day, month and year"
        for subfield in self.fields:
            subfield.required = required

    def compress(self, data_list: Any) -> dt.date | None:
        day, month, year = data_list
        if not (day or month or year):
            return None
        if not (day and month and year):
            raise ValidationError(self.error_messages["incomplete"], code="incomplete")
        try:
            value = dt.date(day=int(day), month=int(month), year=int(year))
        except (ValueError, OverflowError):
            raise ValidationError(f"{self.label} must be a real date", code="invalid") from None
        if not 1900 <= value.year <= 2200:
            raise ValidationError(f"{self.label} must be a real date", code="invalid")
        return value


# Zero-width (non-)joiners are part of how some scripts and emoji are written; every other
# invisible formatting character (direction overrides and the like) can make text read
# differently from what is stored.
_JOINERS = frozenset({"\u200c", "\u200d"})
_LINE_BREAKS = frozenset({"\n", "\r", "\t"})


class PlainTextValidator:
    """Text a person typed: no control, unpaired-surrogate or invisible formatting characters.

    Line breaks and tabs are allowed where the field is a textarea. A line break in a one-line
    answer breaks what it is later written into (an approval stage's name goes into the subject
    of notification emails, which then cannot be sent), and direction overrides make text read
    differently from what is stored.
    """

    def __init__(self, *, label: str, multiline: bool) -> None:
        self.label = label
        self.multiline = multiline

    def __call__(self, value: Any) -> None:
        for character in str(value):
            if self.multiline and character in _LINE_BREAKS:
                continue
            category = unicodedata.category(character)
            if category in ("Cc", "Cs") or (category == "Cf" and character not in _JOINERS):
                raise ValidationError(
                    f"{self.label} can only contain letters, numbers, spaces and punctuation", code="characters"
                )


def _typed_text(field: forms.Field) -> bool:
    # Hidden fields are not typed by a person, passwords are whatever their owner chose, and a
    # field that checks its characters itself says so, so the person is not told twice.
    return (
        isinstance(field, forms.CharField)
        and not isinstance(field, forms.EmailField)  # an address's own rules already refuse these
        and not isinstance(field.widget, forms.HiddenInput | forms.PasswordInput)
        and not getattr(field, "checks_plain_text", False)
    )


def _subject(label: Any) -> str:
    text = str(label or "").removesuffix(" (optional)").strip()
    # A label that asks a question does not read well at the start of an error message.
    return "The answer" if not text or text.endswith("?") else text


class GOVUKForm(forms.Form):
    question_page: ClassVar[bool] = False
    submit_label: ClassVar[str] = "Continue"
    secondary_submit: ClassVar[tuple[str, str] | None] = None  # (name, label)
    field_widths: ClassVar[dict[str, int | str]] = {}
    method: ClassVar[str] = "post"
    label_size: ClassVar[str | None] = Size.SMALL

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.helper = FormHelper()
        self.helper.form_method = self.method
        self.helper.attrs = {"novalidate": ""}
        self.helper.layout = self.build_layout()

    def full_clean(self) -> None:
        # Added here rather than in __init__ so fields a form adds or changes after it is built are covered.
        for field in self.fields.values():
            if _typed_text(field) and not any(isinstance(v, PlainTextValidator) for v in field.validators):
                # Forms copy their fields, so this changes this form's copy only. One plain-English
                # message for every hidden character, NUL included.
                field.validators = [v for v in field.validators if not isinstance(v, ProhibitNullCharactersValidator)]
                field.validators.append(
                    PlainTextValidator(label=_subject(field.label), multiline=isinstance(field.widget, forms.Textarea))
                )
        super().full_clean()

    # A hook for forms that need to group fields (fieldsets, conditional reveals).
    def build_layout(self) -> Layout:
        items: list[Any] = [self.layout_field(name, field) for name, field in self.fields.items()]
        items.append(Submit("submit", self.submit_label))
        if self.secondary_submit:
            items.append(Button.secondary(*self.secondary_submit))
        return Layout(*items)

    def layout_field(self, name: str, field: forms.Field) -> Any:
        widget = field.widget
        as_heading = self.question_page
        size = Size.LARGE if as_heading else self.label_size
        tag = "h1" if as_heading else None
        width = self.field_widths.get(name)
        if isinstance(widget, forms.HiddenInput):
            return Field(name)
        if isinstance(widget, forms.RadioSelect):
            return Field.radios(name, legend_size=size, legend_tag=tag)
        if isinstance(widget, forms.CheckboxSelectMultiple):
            return Field.checkboxes(name, legend_size=size, legend_tag=tag)
        if isinstance(widget, forms.CheckboxInput):
            return Field.checkbox(name)
        if isinstance(widget, forms.Textarea):
            return Field.textarea(name, label_size=size, label_tag=tag)
        if isinstance(widget, forms.Select):
            return Field.select(name, legend_size=size, legend_tag=tag)
        if isinstance(field, DateInputField):
            return Field(name, context={"legend_size": Size.for_legend(size) if size else "", "legend_tag": tag})
        if isinstance(width, int):
            return Field.text(name, label_size=size, label_tag=tag, field_width=width)
        return Field.text(name, label_size=size, label_tag=tag, field_width=width or Fluid.TWO_THIRDS)


__all__ = ["Fixed", "Fluid", "GOVUKDateField", "GOVUKForm", "PlainTextValidator", "Size"]
