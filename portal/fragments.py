"""Keys for template fragments that are pure functions of what they are rendered from.

A filter form on a list page renders the same HTML for the same submitted values and choice
lists, whoever asks (a GET form carries no CSRF token): rendering it through the GOV.UK template
pack costs more than the rest of the page, so the page keeps it under a key made from exactly
those inputs (``{% fragment "…" key %}``, see ``portal_fragments``). Different inputs give a
different key, so the cached HTML is never out of date.
"""

from __future__ import annotations

import hashlib
import json

from django import forms

# Bumped when a form's template changes, so a deploy does not serve the old markup.
FORM_FRAGMENT_VERSION = 1


def form_fragment_key(form: forms.Form) -> str:
    """The form's class, everything submitted (or "not submitted") and every field's choices, hashed."""
    values = None
    if form.is_bound:
        # Everything submitted, not only the fields' names: a date field's widget reads "<name>_0" etc.
        data = form.data
        values = sorted(data.lists()) if hasattr(data, "lists") else sorted(data.items())
    choices = {name: list(field.choices) for name, field in form.fields.items() if hasattr(field, "choices")}
    document = [FORM_FRAGMENT_VERSION, type(form).__qualname__, values, choices]
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()
