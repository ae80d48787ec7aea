"""The Exchange Online admin client: the cmdlets Graph cannot run (creating shared mailboxes).

It speaks the admin REST surface the Exchange Online PowerShell module itself uses:
``POST {exchange}/adminapi/beta/{tenant}/InvokeCommand`` with
``{"CmdletInput": {"CmdletName": …, "Parameters": {…}}}``, answering ``{"value": [...]}``. The app
needs ``Exchange.ManageAsApp`` and an Exchange role. This surface is less stable than Graph, so it
is kept behind this one client; every write raises rather than retries, and the provisioning step
that calls it checks the mailbox first, so an admin can also complete a step by hand.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import requests

from portal.m365.config import AppRegistration, M365Config
from portal.m365.errors import M365Error, NotFoundError, ResponseFormatError
from portal.m365.http import RetryPolicy, ServiceClient, TokenSource, default_registration, parse_json
from portal.m365.tokens import TokenProvider

_CMDLET = re.compile(r"^[A-Z][A-Za-z]+-[A-Za-z]+$")
# How Exchange reports a missing object: ManagementObjectNotFoundException, worded by the cmdlet.
_NOT_FOUND_MARKERS = ("managementobjectnotfoundexception", "couldn't be found", "could not be found")


class ExchangeAdminClient(ServiceClient):
    service = "exchange"

    def __init__(
        self,
        config: M365Config,
        registration: AppRegistration | None = None,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        tokens: TokenSource | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        registration = registration or default_registration(config)
        super().__init__(
            config=config,
            registration=registration,
            base_url=f"{config.exchange_admin_url}/adminapi/beta/{config.tenant_id}/",
            scope=config.scope_for(config.exchange_admin_url),
            tokens=tokens or TokenProvider(config=config, registration=registration, session=session),
            session=session,
            retry=retry,
            sleep=sleep,
            clock=clock,
        )

    def invoke(self, cmdlet: str, parameters: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Run one cmdlet; its result objects. Only ``Get-*`` cmdlets are retried on throttling or 5xx."""
        if not _CMDLET.match(cmdlet):
            raise ValueError(f"{cmdlet!r} is not a cmdlet name (Verb-Noun).")
        response = self._request(
            "POST",
            "InvokeCommand",
            json_body={"CmdletInput": {"CmdletName": cmdlet, "Parameters": dict(parameters)}},
            headers={"Accept": "application/json"},
            idempotent=cmdlet.startswith("Get-"),
        )
        body = parse_json(response, service=self.service)
        rows = body.get("value") if isinstance(body, dict) else None
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise ResponseFormatError(
                message=f"{cmdlet} answered without a 'value' list of objects.",
                status=response.status_code,
                service=self.service,
                method="POST",
            )
        return rows

    def get_mailbox(self, identity: str) -> dict[str, Any] | None:
        """The mailbox (any recipient type), or ``None`` when Exchange has no such mailbox."""
        try:
            rows = self.invoke("Get-Mailbox", {"Identity": identity})
        except M365Error as error:
            if _is_not_found(error):
                return None
            raise
        return rows[0] if rows else None

    def new_shared_mailbox(
        self, *, name: str, display_name: str, primary_smtp_address: str, alias: str | None = None
    ) -> dict[str, Any]:
        """Create a shared mailbox (no licence needed). Not retried: check :meth:`get_mailbox` first."""
        parameters: dict[str, Any] = {
            "Shared": True,
            "Name": name,
            "DisplayName": display_name,
            "PrimarySmtpAddress": primary_smtp_address,
        }
        if alias:
            parameters["Alias"] = alias
        rows = self.invoke("New-Mailbox", parameters)
        if not rows:
            raise ResponseFormatError(message="New-Mailbox answered without the new mailbox.", service=self.service)
        return rows[0]

    def add_mailbox_permission(self, *, identity: str, user: str, auto_mapping: bool) -> list[dict[str, Any]]:
        """Grant ``user`` FullAccess to the mailbox; ``auto_mapping`` adds it to their Outlook."""
        return self.invoke(
            "Add-MailboxPermission",
            {"Identity": identity, "User": user, "AccessRights": ["FullAccess"], "AutoMapping": auto_mapping},
        )

    def add_recipient_permission(self, *, identity: str, trustee: str) -> list[dict[str, Any]]:
        """Grant ``trustee`` SendAs on the mailbox."""
        return self.invoke(
            "Add-RecipientPermission", {"Identity": identity, "Trustee": trustee, "AccessRights": ["SendAs"]}
        )

    def set_send_on_behalf(self, *, identity: str, users: Sequence[str]) -> list[dict[str, Any]]:
        """Set exactly who may send on behalf of the mailbox (replaces the current list)."""
        return self.invoke("Set-Mailbox", {"Identity": identity, "GrantSendOnBehalfTo": list(users)})


def _is_not_found(error: M365Error) -> bool:
    if isinstance(error, NotFoundError):
        return True
    if error.is_transient:
        return False
    text = f"{error.code} {error.message}".lower()
    return any(marker in text for marker in _NOT_FOUND_MARKERS)
