"""Exchange Online's admin REST surface (``InvokeCommand``), for the cmdlets the portal runs.

``exchange_mailboxes`` rows are keyed by the lower-cased primary SMTP address.
A new shared mailbox also appears in Graph (``graph_users``) with
``userPurpose: shared`` in Exchange Online.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from .core import SimRequest, SimResponse, Simulator, new_guid, utcnow

_ALIAS = re.compile(r"^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]{1,64}$")


def _error(status: int, code: str, message: str) -> SimResponse:
    request_id = str(uuid.uuid4())
    return SimResponse.json(
        status,
        {
            "error": {
                "code": code,
                "message": f"|{code}|{message}",
                "details": [],
                "innererror": {"request-id": request_id},
            }
        },
        headers={"request-id": request_id, "Content-Type": "application/json; charset=utf-8"},
    )


def _not_found(identity: str) -> SimResponse:
    return _error(
        404,
        "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException",
        f"The operation couldn't be performed because object '{identity}' couldn't be found on "
        "'AM0PR01A001DC01.EURPR01A001.prod.outlook.com'.",
    )


def handle(request: SimRequest, sim: Simulator, tenant_id: str) -> SimResponse:
    expected = f"/adminapi/beta/{tenant_id}/invokecommand"
    if request.path.rstrip("/").lower() != expected.lower():
        return _error(404, "NotFound", f"No resource at {request.path}.")
    if request.method != "POST":
        return _error(405, "MethodNotAllowed", "InvokeCommand accepts POST only.")
    try:
        payload = request.json() or {}
        cmdlet_input = payload["CmdletInput"]
        name = str(cmdlet_input["CmdletName"])
        parameters = dict(cmdlet_input.get("Parameters") or {})
    except (ValueError, KeyError, TypeError):
        return _error(
            400, "BadRequest", 'The request body must be {"CmdletInput": {"CmdletName": …, "Parameters": {…}}}.'
        )
    handler = _CMDLETS.get(name.lower())
    if handler is None:
        return _error(
            400,
            "System.Management.Automation.CommandNotFoundException",
            f"The term '{name}' is not recognized as the name of a cmdlet, function, script file, or operable program.",
        )
    with sim.store.lock:
        return handler(sim, parameters, request.base_url)


def _wrap(base_url: str, rows: list[dict[str, Any]], applied: bool = False) -> SimResponse:
    return SimResponse.json(
        200,
        {"@odata.context": f"{base_url}/adminapi/beta/$metadata#Collection(Exchange.GenericHashTable)", "value": rows},
        headers={"request-id": str(uuid.uuid4())},
        applied=applied,
    )


def _find(sim: Simulator, identity: str) -> dict[str, Any] | None:
    key = (identity or "").strip().lower()
    mailboxes = sim.store.table("exchange_mailboxes")
    if key in mailboxes:
        return mailboxes[key]
    for row in mailboxes.values():
        if key in (row["Name"].lower(), row["Alias"].lower(), row["Guid"].lower(), row["DisplayName"].lower()):
            return row
    return None


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if not key.startswith("_")}


def _new_mailbox(sim: Simulator, params: dict[str, Any], base_url: str) -> SimResponse:
    if not params.get("Shared"):
        return _error(400, "InvalidParameter", "Only shared mailboxes can be created here: pass Shared = true.")
    address = str(params.get("PrimarySmtpAddress", "")).strip()
    name = str(params.get("Name", "")).strip()
    if not address or "@" not in address or not name:
        return _error(400, "ParameterBindingException", "Name and a valid PrimarySmtpAddress are required.")
    alias = str(params.get("Alias") or address.split("@", 1)[0])
    if not _ALIAS.match(alias) or alias.startswith(".") or alias.endswith(".") or ".." in alias:
        return _error(
            400, "DataValidationException", f"Property Alias '{alias}' contains characters that aren't allowed."
        )
    users = sim.store.table("graph_users")
    taken = address.lower() in sim.store.table("exchange_mailboxes") or any(
        address.lower() in ((u.get("mail") or "").lower(), (u.get("userPrincipalName") or "").lower())
        for u in users.values()
    )
    if taken:
        return _error(
            400,
            "Microsoft.Exchange.Management.Tasks.ProxyAddressExistsException",
            f'The proxy address "SMTP:{address}" is already being used by the proxy addresses or LegacyExchangeDN. '
            "Please choose another proxy address.",
        )
    guid = new_guid()
    row = {
        "Name": name,
        "Alias": alias,
        "DisplayName": str(params.get("DisplayName") or name),
        "PrimarySmtpAddress": address,
        "UserPrincipalName": address,
        "RecipientTypeDetails": "SharedMailbox",
        "ExchangeGuid": new_guid(),
        "Guid": guid,
        "ExternalDirectoryObjectId": guid,
        "WhenCreated": utcnow().isoformat(),
        "GrantSendOnBehalfTo": [],
        "_full_access": [],
        "_send_as": [],
    }
    sim.store.table("exchange_mailboxes")[address.lower()] = row
    users[guid] = {
        "id": guid,
        "userPrincipalName": address,
        "mail": address,
        "displayName": row["DisplayName"],
        "accountEnabled": False,  # shared mailboxes have a disabled account and need no licence
        "userPurpose": "shared",
        "mailbox_location": "exchange_online",
    }
    sim.store.touch()
    return _wrap(base_url, [_public(row)], applied=True)


def _get_mailbox(sim: Simulator, params: dict[str, Any], base_url: str) -> SimResponse:
    identity = str(params.get("Identity", ""))
    row = _find(sim, identity)
    if row is None:
        return _not_found(identity)
    return _wrap(base_url, [_public(row)])


def _user_exists(sim: Simulator, user: str) -> bool:
    key = user.lower()
    return any(
        key in ((u.get("mail") or "").lower(), (u.get("userPrincipalName") or "").lower(), u["id"].lower())
        for u in sim.store.table("graph_users").values()
    )


def _add_mailbox_permission(sim: Simulator, params: dict[str, Any], base_url: str) -> SimResponse:
    identity, user = str(params.get("Identity", "")), str(params.get("User", ""))
    row = _find(sim, identity)
    if row is None:
        return _not_found(identity)
    if not _user_exists(sim, user):
        return _not_found(user)
    rights = params.get("AccessRights") or ["FullAccess"]
    rights = [rights] if isinstance(rights, str) else list(rights)
    if rights != ["FullAccess"]:
        return _error(400, "InvalidParameter", "Only FullAccess is supported by this simulator.")
    applied = False
    if user.lower() not in [entry["User"].lower() for entry in row["_full_access"]]:
        row["_full_access"].append({"User": user, "AutoMapping": bool(params.get("AutoMapping", True))})
        sim.store.touch()
        applied = True
    result = {
        "Identity": row["Name"],
        "User": user,
        "AccessRights": ["FullAccess"],
        "IsInherited": False,
        "Deny": False,
        "InheritanceType": "All",
    }
    return _wrap(base_url, [result], applied=applied)


def _add_recipient_permission(sim: Simulator, params: dict[str, Any], base_url: str) -> SimResponse:
    identity, trustee = str(params.get("Identity", "")), str(params.get("Trustee", ""))
    row = _find(sim, identity)
    if row is None:
        return _not_found(identity)
    if not _user_exists(sim, trustee):
        return _not_found(trustee)
    applied = False
    if trustee.lower() not in [entry.lower() for entry in row["_send_as"]]:
        row["_send_as"].append(trustee)
        sim.store.touch()
        applied = True
    result = {
        "Identity": row["Name"],
        "Trustee": trustee,
        "AccessControlType": "Allow",
        "AccessRights": ["SendAs"],
        "IsInherited": False,
        "InheritanceType": "None",
    }
    return _wrap(base_url, [result], applied=applied)


def _set_mailbox(sim: Simulator, params: dict[str, Any], base_url: str) -> SimResponse:
    identity = str(params.get("Identity", ""))
    row = _find(sim, identity)
    if row is None:
        return _not_found(identity)
    grant = params.get("GrantSendOnBehalfTo")
    if grant is None:
        return _error(400, "InvalidParameter", "Only GrantSendOnBehalfTo can be set by this simulator.")
    current = list(row["GrantSendOnBehalfTo"])
    if isinstance(grant, dict):  # the multi-valued @{Add=…; Remove=…} form
        adds = grant.get("Add") or grant.get("add") or []
        removes = grant.get("Remove") or grant.get("remove") or []
        adds = [adds] if isinstance(adds, str) else adds
        removes = [removes] if isinstance(removes, str) else removes
        wanted = [u for u in current if u.lower() not in {r.lower() for r in removes}]
        wanted += [a for a in adds if a.lower() not in {u.lower() for u in wanted}]
    else:
        wanted = [grant] if isinstance(grant, str) else list(grant)
    for user in wanted:
        if not _user_exists(sim, user):
            return _not_found(user)
    applied = wanted != current
    row["GrantSendOnBehalfTo"] = wanted
    if applied:
        sim.store.touch()
    return _wrap(base_url, [], applied=applied)


def _get_mailbox_permission(sim: Simulator, params: dict[str, Any], base_url: str) -> SimResponse:
    identity = str(params.get("Identity", ""))
    row = _find(sim, identity)
    if row is None:
        return _not_found(identity)
    rows = [
        {
            "Identity": row["Name"],
            "User": entry["User"],
            "AccessRights": ["FullAccess"],
            "IsInherited": False,
            "Deny": False,
        }
        for entry in row["_full_access"]
    ]
    return _wrap(base_url, rows)


def _get_recipient_permission(sim: Simulator, params: dict[str, Any], base_url: str) -> SimResponse:
    identity = str(params.get("Identity", ""))
    row = _find(sim, identity)
    if row is None:
        return _not_found(identity)
    rows = [
        {"Identity": row["Name"], "Trustee": trustee, "AccessRights": ["SendAs"], "AccessControlType": "Allow"}
        for trustee in row["_send_as"]
    ]
    return _wrap(base_url, rows)


_CMDLETS = {
    "new-mailbox": _new_mailbox,
    "get-mailbox": _get_mailbox,
    "add-mailboxpermission": _add_mailbox_permission,
    "get-mailboxpermission": _get_mailbox_permission,
    "add-recipientpermission": _add_recipient_permission,
    "get-recipientpermission": _get_recipient_permission,
    "set-mailbox": _set_mailbox,
}
