"""Uploading an Email Router's configuration: the server's name, its configuration file and, optionally,
its SystemState file."""

from __future__ import annotations

from typing import Any

from crispy_forms_gds.layout import Field, Size
from django import forms
from django.core.files.uploadedfile import UploadedFile

from migration.router_config import MAX_FILE_BYTES, RouterFileError, sniff
from portal.forms import Fluid, GOVUKForm

SERVER_NAME_MAX = 200


class XMLFileField(forms.FileField):
    """A GOV.UK file upload for one XML file of at most 32MB; cleans to ``(file name, bytes)``.

    Size and name are checked before the content is read; the content is then sniffed (binary,
    archive, not XML, encoding) so most wrong files are refused on the page, before a job runs.
    """

    def __init__(self, *, label: str, subject: str, state_file: bool = False, **kwargs: Any) -> None:
        super().__init__(
            label=label,
            widget=forms.ClearableFileInput(attrs={"accept": ".xml,text/xml,application/xml"}),
            error_messages={
                "required": f"Select the {subject}",
                "empty": "The selected file is empty",
                "invalid": "The selected file could not be uploaded. Try again",
                "missing": "The selected file could not be uploaded. Try again",
                "max_length": "The selected file's name must be 255 characters or fewer",
            },
            max_length=255,
            **kwargs,
        )
        self.state_file = state_file

    def clean(self, data: Any, initial: Any = None) -> tuple[str, bytes] | None:
        upload: UploadedFile | None = super().clean(data, initial)
        if not upload:
            return None
        if upload.size is not None and upload.size > MAX_FILE_BYTES:
            raise forms.ValidationError("The selected file must be smaller than 32MB", code="too_big")
        if not (upload.name or "").lower().endswith(".xml"):
            raise forms.ValidationError("The selected file must be an XML file", code="wrong_type")
        content = upload.read(MAX_FILE_BYTES + 1)
        if not content:
            raise forms.ValidationError(self.error_messages["empty"], code="empty")
        try:
            sniff(content, label="The selected file", state_file=self.state_file)
        except RouterFileError as error:
            raise forms.ValidationError(error.message, code=error.code) from None
        return upload.name or "", content


class RouterUploadForm(GOVUKForm):
    submit_label = "Upload and import"
    field_widths = {"server_name": Fluid.ONE_HALF}

    server_name = forms.CharField(
        label="Email Router server name",
        help_text="The name of the Windows server the Email Router runs on, for example CRMROUTER01. "
        "Uploading again for the same server replaces what it serves.",
        max_length=SERVER_NAME_MAX,
        error_messages={
            "required": "Enter the name of the Email Router server",
            "max_length": f"The server name must be {SERVER_NAME_MAX} characters or fewer",
        },
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    configuration_file = XMLFileField(
        label="Configuration file",
        subject="Email Router configuration file",
        help_text="Microsoft.Crm.Tools.EmailAgent.xml from the Email Router's installation folder. "
        "It must be smaller than 32MB.",
    )
    state_file = XMLFileField(
        label="SystemState file (optional)",
        subject="SystemState file",
        state_file=True,
        required=False,
        help_text="Microsoft.Crm.Tools.EmailAgent.SystemState.xml from the same folder, if you have it.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A too-long name gets an error message, not silent truncation by the browser.
        self.fields["server_name"].widget.attrs.pop("maxlength", None)

    def clean_server_name(self) -> str:
        name = " ".join(self.cleaned_data["server_name"].split())
        if not name:
            raise forms.ValidationError(self.fields["server_name"].error_messages["required"], code="required")
        if any(not character.isprintable() for character in name):
            raise forms.ValidationError(
                "The server name can only contain letters, numbers, spaces and punctuation", code="characters"
            )
        return name

    def layout_field(self, name: str, field: forms.Field) -> Any:
        if isinstance(field, forms.FileField):
            return Field(name, context={"label_size": Size.for_label(Size.SMALL)})
        return super().layout_field(name, field)
