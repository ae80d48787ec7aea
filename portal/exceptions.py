"""The portal's domain errors.

Services raise these; views turn them into a GOV.UK error summary or message.
Anything else escaping a service is a bug and becomes a 500 page.
"""

from __future__ import annotations


class PortalError(Exception):
    """A rule of the portal refused the action; ``message`` is shown to the user."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class PermissionDeniedError(PortalError):
    """The actor may not do this (separation of duties, wrong role, not theirs)."""


class InvalidStateError(PortalError):
    """The object is not in a state that allows this transition (e.g. already decided)."""


class ConfigurationError(PortalError):
    """Portal configuration needed for this action is missing or wrong."""
