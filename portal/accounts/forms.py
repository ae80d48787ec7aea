from __future__ import annotations

from django import forms

from portal.forms import GOVUKForm


class SignInForm(GOVUKForm):
    submit_label = "Sign in"
    field_widths = {"username": 20, "password": 20}

    username = forms.CharField(
        label="Username",
        max_length=150,
        error_messages={"required": "Enter your username", "max_length": "Username must be 150 characters or fewer"},
        widget=forms.TextInput(attrs={"autocomplete": "username", "spellcheck": "false", "autocapitalize": "none"}),
    )
    password = forms.CharField(
        label="Password",
        max_length=1024,
        strip=False,
        error_messages={"required": "Enter your password", "max_length": "Password must be 1024 characters or fewer"},
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )
    next = forms.CharField(required=False, max_length=2000, widget=forms.HiddenInput)
