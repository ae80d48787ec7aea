"""The discovery page's "Sync now" form."""

from __future__ import annotations

from typing import Any

from django import forms
from django.urls import reverse

from migration.models import SyncKind
from portal.forms import GOVUKForm


class SyncRequestForm(GOVUKForm):
    submit_label = "Sync now"

    kind = forms.ChoiceField(
        label="What should discovery read?",
        choices=[
            (SyncKind.INCREMENTAL, "Only mailboxes and owners changed since the last run (quicker)"),
            (SyncKind.FULL, "Every mailbox again, and check each one in Exchange Online"),
        ],
        initial=SyncKind.INCREMENTAL,
        widget=forms.RadioSelect,
        error_messages={
            "required": "Select what discovery should read",
            "invalid_choice": "Select what discovery should read",
        },
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The page is read with GET; the request to run goes to its own POST-only address.
        self.helper.form_action = reverse("migration:discovery_sync")
