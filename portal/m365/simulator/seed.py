"""Seed data: a believable organisation, or N mailboxes with the same mixture for benchmarks.

Every mailbox is generated to fit exactly one integration class, and the seed
records which in ``meta["truth"]`` (served at ``/_sim/truth``) so inventory
tests can compare the portal's classification with what was built:

* ``compliant_sss`` — server-side sync on the Exchange Online profile, approved, tested;
* ``outlook_client`` — at least one direction on Dynamics 365 for Outlook;
* ``email_router`` — router delivery with no or a legacy (POP3/SMTP) profile, listed in the router file;
* ``forward_mailbox`` — incoming delivery through a forward mailbox (and the forward mailboxes themselves);
* ``sss_wrong_profile`` — server-side sync bound to the on-premises/hybrid profile;
* ``not_in_exchange_online`` — set up for server-side sync but the mailbox is on-premises (Graph 404);
* ``no_email`` — no delivery at all, or the owner is disabled.

The demo organisation also has two weeks of tracked email (with attachments) on its queues and
some of its users, and warnings that keep recurring, so mailbox health has something to show.
Numeric seeds have none of it: they exist for benchmarks, whose timings must not move.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
import random
import uuid
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from . import dataverse, tables
from .core import Store, deterministic_guids, odata_timestamp, utcnow
from .entra import Tenant

DOMAIN = "example.gov.uk"
ORGANISATION = "Department for Example Services"

CLASSES = (
    "compliant_sss",
    "outlook_client",
    "email_router",
    "forward_mailbox",
    "sss_wrong_profile",
    "not_in_exchange_online",
    "no_email",
)
USER_MIX = {
    "compliant_sss": 45,
    "outlook_client": 20,
    "email_router": 12,
    "forward_mailbox": 3,
    "sss_wrong_profile": 7,
    "not_in_exchange_online": 6,
    "no_email": 7,
}
QUEUE_MIX = {
    "compliant_sss": 50,
    "email_router": 25,
    "forward_mailbox": 10,
    "sss_wrong_profile": 10,
    "no_email": 5,
}

BUSINESS_UNITS = (
    "Corporate Services",
    "Finance",
    "Digital and Technology",
    "Operations",
    "Policy and Strategy",
    "Customer Services",
    "Legal",
    "People and HR",
)
QUEUE_NAMES = (
    "General enquiries",
    "Complaints",
    "Freedom of information requests",
    "Subject access requests",
    "Finance enquiries",
    "Accounts payable",
    "Accounts receivable",
    "Payroll",
    "Procurement",
    "Service desk",
    "Digital support",
    "Website feedback",
    "Press office",
    "Ministerial correspondence",
    "Parliamentary questions",
    "Policy consultations",
    "Customer contact",
    "Appointments",
    "Grants",
    "Licensing",
    "Casework",
    "Legal advice requests",
    "Contracts",
    "Recruitment",
    "Learning and development",
    "Pensions",
    "Facilities",
    "Security",
    "Data protection",
    "Business continuity",
    "Estates",
    "Fleet",
    "Travel bookings",
    "Events",
    "Stakeholder engagement",
    "Partnerships",
    "Audit and risk",
    "Fraud reports",
    "Whistleblowing",
    "Translation requests",
)
FIRST_NAMES = (
    "Aisha",
    "Ben",
    "Chloe",
    "Daniel",
    "Eleanor",
    "Farhan",
    "Grace",
    "Harry",
    "Isla",
    "Jack",
    "Kiran",
    "Lily",
    "Mohammed",
    "Niamh",
    "Oliver",
    "Priya",
    "Rhys",
    "Sophie",
    "Tom",
    "Uma",
    "Victoria",
    "William",
    "Yusuf",
    "Zara",
    "Amelia",
    "Callum",
    "Emily",
    "Finlay",
    "Hannah",
    "Ibrahim",
    "Jessica",
    "Liam",
    "Megan",
    "Nathan",
    "Olivia",
    "Ruby",
    "Samuel",
    "Thomas",
    "Ellie",
    "Owen",
    "Riya",
    "Sam",
    "Georgia",
    "Ahmed",
    "Freya",
    "Ewan",
    "Catrin",
)
LAST_NAMES = (
    "Smith",
    "Jones",
    "Williams",
    "Taylor",
    "Brown",
    "Davies",
    "Evans",
    "Wilson",
    "Thomas",
    "Johnson",
    "Roberts",
    "Robinson",
    "Thompson",
    "Wright",
    "Walker",
    "White",
    "Edwards",
    "Hughes",
    "Green",
    "Hall",
    "Lewis",
    "Harris",
    "Clarke",
    "Patel",
    "Jackson",
    "Wood",
    "Turner",
    "Martin",
    "Cooper",
    "Hill",
    "Ward",
    "Morris",
    "Moore",
    "Clark",
    "Lee",
    "King",
    "Baker",
    "Harrison",
    "Morgan",
    "Allen",
    "James",
    "Scott",
    "Phillips",
    "Watson",
    "Davis",
    "Parker",
    "Price",
    "Bennett",
    "Young",
    "Griffiths",
    "Mitchell",
    "Kelly",
    "Cook",
    "Carter",
    "Richardson",
    "Bailey",
    "Collins",
    "Bell",
    "Shaw",
    "Murphy",
    "Miller",
    "Cox",
    "Richards",
    "Khan",
    "Marshall",
    "Anderson",
    "Simpson",
    "Ellis",
    "Okafor",
)

# Entra identities for interactive sign-in to the portal, matching its demo accounts' roles.
DEMO_IDENTITIES = (
    ("Riya Patel", "riya.patel", ["Requester"]),
    ("Owen Hughes", "owen.hughes", ["Requester", "Approver"]),
    ("Grace Okafor", "grace.okafor", ["PlatformAdmin"]),
    ("Tom Fletcher", "tom.fletcher", ["MigrationLead"]),
    ("Aisha Khan", "aisha.khan", ["Auditor"]),
    ("Sam Doyle", "sam.doyle", []),
    ("Chloe Bennett", "chloe.bennett", ["Approver", "PlatformAdmin"]),
)

# Recent activity in the demo: days of tracked email, and typical (incoming, outgoing) emails a day.
ACTIVITY_DAYS = 14
BUSY_QUEUES = {
    "General enquiries": (24, 10),
    "Customer contact": (20, 9),
    "Service desk": (16, 12),
    "Complaints": (9, 5),
    "Freedom of information requests": (6, 3),
}
QUIET_QUEUE_RANGE = ((1, 4), (0, 2))
ACTIVE_USERS = 20
USER_RANGE = ((1, 3), (0, 2))
# Users whose email is tracked: server-side sync (on either profile) or the Outlook client.
ACTIVE_USER_CLASSES = ("compliant_sss", "outlook_client", "sss_wrong_profile")
ATTACHMENT_SHARE = 0.25
ATTACHMENTS_PER_EMAIL = (1, 1, 1, 2, 2, 3)
LARGE_ATTACHMENT_SHARE = 0.04
ATTACHMENT_BYTES = (20 * 1024, 2 * 1024 * 1024)
LARGE_ATTACHMENT_MIN = 4 * 1024 * 1024
OFFICE_HOURS = (8 * 3600, 18 * 3600)
OFFICE_HOURS_SHARE = 0.85

SERVER_TYPE_EXCHANGE = 0
SERVER_TYPE_POP3_SMTP = 1
SERVER_TYPE_EXCHANGE_HYBRID = 2
CREDENTIALS_USER_OR_QUEUE = 0
CREDENTIALS_S2S = 2
CREDENTIALS_WINDOWS = 3


def build_seed(spec: str, *, tenant: Tenant, state_dir: Path | None = None) -> tuple[dict, dict]:
    """Build the tables for ``spec`` (``demo`` or a number of mailboxes) and write the router file."""
    if spec == "demo":
        users, queues, seed_value = 2400, len(QUEUE_NAMES), 2026
    else:
        try:
            total = int(spec)
        except ValueError:
            raise ValueError(f"seed must be 'demo' or a number of mailboxes, not {spec!r}") from None
        if not 1 <= total <= 1_000_000:
            raise ValueError("seed must be between 1 and 1,000,000 mailboxes")
        queues = max(1, total // 100)
        users, seed_value = total - queues, total
    rng = random.Random(seed_value)  # noqa: S311 - reproducible demo data
    builder = _Builder(rng, tenant)
    with deterministic_guids(rng):
        builder.build(users=users, queues=queues)
        if spec == "demo":
            builder.recent_activity()
    if state_dir is not None:
        (state_dir / "Microsoft.Crm.Tools.EmailAgent.xml").write_text(builder.router_xml(), encoding="utf-8")
    meta = {"version": builder.store.meta["version"], "truth": builder.truth(), "generated_at": odata_timestamp()}
    return builder.store.tables, meta


def _guid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _slug(text: str) -> str:
    return "-".join("".join(ch if ch.isalnum() else " " for ch in text.lower()).split())


class _Builder:
    def __init__(self, rng: random.Random, tenant: Tenant) -> None:
        self.rng = rng
        self.tenant = tenant
        self.store = Store(None)
        self.now = utcnow()
        self.classes: dict[str, str] = {}  # mailboxid -> class
        self.router_entries: list[dict[str, str]] = []

    # -- helpers ------------------------------------------------------------------------------------
    def insert(self, entity_set: str, values: dict[str, Any]) -> dict[str, Any]:
        return tables.insert(self.store, entity_set, values, now=self.now)

    def update(self, entity_set: str, row_id: str, values: dict[str, Any]) -> dict[str, Any]:
        return tables.update(self.store, entity_set, row_id, values, now=self.now)

    def pick(self, mix: dict[str, int]) -> str:
        return self.rng.choices(list(mix), weights=list(mix.values()))[0]

    # -- the organisation -------------------------------------------------------------------------
    def build(self, *, users: int, queues: int) -> None:
        rng = self.rng
        root = self.insert("businessunits", {"businessunitid": _guid(rng), "name": ORGANISATION})
        units = [root] + [
            self.insert(
                "businessunits",
                {"businessunitid": _guid(rng), "name": name, "_parentbusinessunitid_value": root["businessunitid"]},
            )
            for name in BUSINESS_UNITS[: max(1, min(len(BUSINESS_UNITS), users // 60 or 1))]
        ]
        self.teams = [
            self.insert(
                "teams",
                {"teamid": _guid(rng), "name": f"{unit['name']} team", "_businessunitid_value": unit["businessunitid"]},
            )
            for unit in units
        ]
        self.profiles = {
            "exo": self.insert(
                "emailserverprofiles",
                {
                    "emailserverprofileid": _guid(rng),
                    "name": "Microsoft Exchange Online",
                    "servertype": SERVER_TYPE_EXCHANGE,
                    "incomingcredentialretrieval": CREDENTIALS_S2S,
                    "outgoingcredentialretrieval": CREDENTIALS_S2S,
                    "useautodiscover": True,
                    "sendemailalert": True,
                },
            ),
            "hybrid": self.insert(
                "emailserverprofiles",
                {
                    "emailserverprofileid": _guid(rng),
                    "name": "Exchange 2016 on-premises (hybrid)",
                    "servertype": SERVER_TYPE_EXCHANGE_HYBRID,
                    "incomingcredentialretrieval": CREDENTIALS_WINDOWS,
                    "outgoingcredentialretrieval": CREDENTIALS_WINDOWS,
                    "useautodiscover": False,
                    "sendemailalert": False,
                },
            ),
            "pop3": self.insert(
                "emailserverprofiles",
                {
                    "emailserverprofileid": _guid(rng),
                    "name": "Legacy POP3/SMTP (Email Router era)",
                    "servertype": SERVER_TYPE_POP3_SMTP,
                    "incomingcredentialretrieval": CREDENTIALS_USER_OR_QUEUE,
                    "outgoingcredentialretrieval": CREDENTIALS_USER_OR_QUEUE,
                    "useautodiscover": False,
                    "sendemailalert": False,
                },
            ),
        }
        self.insert(
            "organizations",
            {
                "organizationid": _guid(rng),
                "name": ORGANISATION,
                "_defaultemailserverprofileid_value": self.profiles["exo"]["emailserverprofileid"],
                "emailconnectionchannel": 0,
                "requireapprovalforuseremail": True,
                "requireapprovalforqueueemail": True,
                "maxuploadfilesize": 5_242_880,
            },
        )
        self.units = units
        for index in range(queues):
            self._queue(index)
        used: set[str] = set()
        for index in range(users):
            self._user(index, used)
        for index in range(2 if users >= 50 else 0):
            self._forward_mailbox(index)
        self._identities()

    def _address(self, local: str) -> str:
        return f"{local}@{DOMAIN}"

    def _graph_user(
        self, *, object_id: str, address: str, name: str, purpose: str, location: str, enabled: bool = True
    ) -> None:
        self.store.table("graph_users")[object_id] = {
            "id": object_id,
            "userPrincipalName": address,
            "mail": address,
            "displayName": name,
            "accountEnabled": enabled,
            "userPurpose": purpose,
            "mailbox_location": location,
        }

    def _queue(self, index: int) -> None:
        rng = self.rng
        base = QUEUE_NAMES[index % len(QUEUE_NAMES)]
        name = base if index < len(QUEUE_NAMES) else f"{base} {index // len(QUEUE_NAMES) + 1}"
        address = self._address(_slug(name))
        team = rng.choice(self.teams)
        klass = self.pick(QUEUE_MIX)
        queue = self.insert(
            "queues",
            {
                "queueid": _guid(rng),
                "name": name,
                "description": f"Shared inbox for {name.lower()}.",
                "emailaddress": address,
                "queueviewtype": 0 if rng.random() < 0.8 else 1,
                "incomingemailfilteringmethod": rng.choice((0, 0, 1, 3)),
                "_ownerid_value": team["teamid"],
                "_businessunitid_value": team["_businessunitid_value"],
            },
        )
        object_id = _guid(rng)
        self._graph_user(
            object_id=object_id, address=address, name=name, purpose="shared", location="exchange_online", enabled=False
        )
        mailbox_id = queue["_defaultmailbox_value"]
        self._configure_mailbox(mailbox_id, klass, is_queue=True, name=name, address=address, object_id=object_id)

    def _user(self, index: int, used: set[str]) -> None:
        rng = self.rng
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        local = f"{first}.{last}".lower()
        if local in used:
            local = f"{local}{index}"
        used.add(local)
        address = self._address(local)
        unit = rng.choice(self.units)
        klass = self.pick(USER_MIX)
        disabled = klass == "no_email" and rng.random() < 0.5
        object_id = _guid(rng)
        user = self.insert(
            "systemusers",
            {
                "systemuserid": _guid(rng),
                "firstname": first,
                "lastname": last,
                "fullname": f"{first} {last}",
                "domainname": address,
                "internalemailaddress": address,
                "isdisabled": disabled,
                "azureactivedirectoryobjectid": object_id,
                "_businessunitid_value": unit["businessunitid"],
            },
        )
        location = "on_premises" if klass == "not_in_exchange_online" else "exchange_online"
        self._graph_user(
            object_id=object_id,
            address=address,
            name=f"{first} {last}",
            purpose="user",
            location=location,
            enabled=not disabled,
        )
        self._configure_mailbox(
            user["_defaultmailbox_value"],
            klass,
            is_queue=False,
            name=f"{first} {last}",
            address=address,
            object_id=object_id,
        )

    def _forward_mailbox(self, index: int) -> None:
        address = self._address(f"crm-forward-{index + 1}")
        mailbox = self.insert(
            "mailboxes",
            {
                "mailboxid": _guid(self.rng),
                "name": f"Forward mailbox {index + 1}",
                "emailaddress": address,
                "isforwardmailbox": True,
                "incomingemaildeliverymethod": 2,
                "outgoingemaildeliverymethod": 0,
                "actdeliverymethod": 2,
                "emailrouteraccessapproval": 1,
            },
        )
        self._graph_user(
            object_id=_guid(self.rng),
            address=address,
            name=f"Forward mailbox {index + 1}",
            purpose="shared",
            location="exchange_online",
            enabled=False,
        )
        self.classes[mailbox["mailboxid"]] = "forward_mailbox"
        self.router_entries.append(
            {"kind": "forward", "address": address, "id": mailbox["mailboxid"], "name": mailbox["name"]}
        )

    def _configure_mailbox(
        self, mailbox_id: str, klass: str, *, is_queue: bool, name: str, address: str, object_id: str
    ) -> None:
        rng = self.rng
        exo = self.profiles["exo"]["emailserverprofileid"]
        settings: dict[str, Any]
        act_sss = 2 if is_queue else 1  # queues have no appointments, contacts and tasks
        if klass == "compliant_sss":
            settings = _sss(exo, act=act_sss, ok=True, is_queue=is_queue)
        elif klass == "outlook_client":
            incoming, outgoing = rng.choice(((1, 1), (1, 2), (2, 1)))
            settings = {
                "_emailserverprofile_value": exo if rng.random() < 0.5 else None,
                "incomingemaildeliverymethod": incoming,
                "outgoingemaildeliverymethod": outgoing,
                "actdeliverymethod": 0,
                "emailrouteraccessapproval": 1,
                "incomingemailstatus": 0,
                "outgoingemailstatus": 0,
                "actstatus": 0,
                "mailboxstatus": 0,
            }
        elif klass == "email_router":
            settings = {
                "_emailserverprofile_value": self.profiles["pop3"]["emailserverprofileid"]
                if rng.random() < 0.5
                else None,
                "incomingemaildeliverymethod": 2,
                "outgoingemaildeliverymethod": 2,
                "actdeliverymethod": 2,
                "emailrouteraccessapproval": rng.choice((1, 1, 2)),
                "incomingemailstatus": 0,
                "outgoingemailstatus": 0,
                "actstatus": 0,
                "mailboxstatus": 0,
            }
            self.router_entries.append(
                {"kind": "queue" if is_queue else "user", "address": address, "id": mailbox_id, "name": name}
            )
        elif klass == "forward_mailbox":
            settings = {
                "_emailserverprofile_value": None,
                "incomingemaildeliverymethod": 3,
                "outgoingemaildeliverymethod": rng.choice((0, 2)),
                "actdeliverymethod": 2,
                "emailrouteraccessapproval": 1,
                "incomingemailstatus": 0,
                "outgoingemailstatus": 0,
                "actstatus": 0,
                "mailboxstatus": 0,
            }
        elif klass == "sss_wrong_profile":
            settings = _sss(self.profiles["hybrid"]["emailserverprofileid"], act=act_sss, ok=True, is_queue=is_queue)
        elif klass == "not_in_exchange_online":
            settings = _sss(exo, act=act_sss, ok=False, is_queue=is_queue)
        else:  # no_email
            settings = {
                "_emailserverprofile_value": None,
                "incomingemaildeliverymethod": 0,
                "outgoingemaildeliverymethod": 0,
                "actdeliverymethod": 2,
                "emailrouteraccessapproval": 0,
                "incomingemailstatus": 0,
                "outgoingemailstatus": 0,
                "actstatus": 0,
                "mailboxstatus": 0,
                "enabledforincomingemail": False,
                "enabledforoutgoingemail": False,
            }
        self.update("mailboxes", mailbox_id, settings)
        self.classes[mailbox_id] = klass
        if klass == "not_in_exchange_online":
            self.insert(
                "tracelogs",
                {
                    "tracelogid": _guid(rng),
                    "level": 3,
                    "tracecode": 31,
                    "text": f"The mailbox {name} can't be accessed. The email address {address} was not found in "
                    "Exchange Online. The mailbox may be hosted on-premises.",
                    "errordetails": "Microsoft.Exchange.WebServices.Data.ServiceResponseException: The SMTP address "
                    "has no mailbox associated with it.",
                    "_regardingobjectid_value": mailbox_id,
                },
            )

    def _identities(self) -> None:
        identities = self.store.table("entra_identities")
        for name, local, roles in DEMO_IDENTITIES:
            oid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.tenant.tenant_id}/{local}"))
            identities[oid] = {
                "oid": oid,
                "username": self._address(local),
                "name": name,
                "email": self._address(local),
                "roles": list(roles),
            }
            # The same people have Exchange Online mailboxes, so they can be granted access to new ones.
            self._graph_user(
                object_id=oid, address=self._address(local), name=name, purpose="user", location="exchange_online"
            )

    # -- recent activity (demo only) -----------------------------------------------------------------
    def recent_activity(self) -> None:
        """Two weeks of tracked email on every queue that has email and on some users, and recurring warnings.

        Everything is drawn from the seed's generator whatever the date, so the same seed gives the
        same rows; their timestamps follow the clock, as every seeded row's do. Today only has the
        email that arrived before now, and comes last so that only its rows depend on the hour.
        """
        organization = tables.organization_row(self.store) or {}
        self.max_upload = int(organization.get("maxuploadfilesize") or 5_242_880)
        queues = self._active_queues()
        mailboxes = [*queues, *self._active_users()]
        self._recurring_warnings([mailbox_id for mailbox_id, _ in queues])
        today = dt.datetime.combine(self.now.date(), dt.time(), tzinfo=dt.UTC)
        for back in range(ACTIVITY_DAYS - 1, -1, -1):
            day = today - dt.timedelta(days=back)
            for mailbox_id, volumes in mailboxes:
                for outgoing, typical in zip((False, True), volumes, strict=True):
                    self._day_of_email(mailbox_id, day, typical, outgoing=outgoing)

    def _active_queues(self) -> list[tuple[str, tuple[int, int]]]:
        active: list[tuple[str, tuple[int, int]]] = []
        for queue in self.store.table("queues").values():
            mailbox_id = queue["_defaultmailbox_value"]
            if self.classes.get(mailbox_id) == "no_email":
                continue  # no delivery method: nothing can be tracked
            volumes = BUSY_QUEUES.get(queue["name"]) or tuple(self.rng.randint(*bounds) for bounds in QUIET_QUEUE_RANGE)
            active.append((mailbox_id, volumes))
        return active

    def _active_users(self) -> list[tuple[str, tuple[int, int]]]:
        candidates = [
            mailbox_id
            for mailbox_id, mailbox in self.store.table("mailboxes").items()
            if mailbox.get("regardingobjecttypecode") == "systemuser"
            and self.classes.get(mailbox_id) in ACTIVE_USER_CLASSES
        ]
        chosen = self.rng.sample(candidates, min(ACTIVE_USERS, len(candidates)))
        return [(mailbox_id, tuple(self.rng.randint(*bounds) for bounds in USER_RANGE)) for mailbox_id in chosen]

    def _day_of_email(self, mailbox_id: str, day: dt.datetime, typical: int, *, outgoing: bool) -> None:
        rng = self.rng
        count = round(typical * rng.uniform(0.6, 1.4))
        moments = sorted(day + dt.timedelta(seconds=self._time_of_day()) for _ in range(count))
        attachments = [self._attachment_sizes() for _ in range(count)]
        # Today's later email has not arrived yet; it is drawn all the same so the draws never depend on the hour.
        arrived = bisect.bisect_right(moments, self.now)
        if arrived:
            dataverse.record_emails(
                self.store,
                mailbox_id,
                outgoing=outgoing,
                moments=moments[:arrived],
                attachments=attachments[:arrived],
            )

    def _time_of_day(self) -> float:
        if self.rng.random() < OFFICE_HOURS_SHARE:
            return self.rng.uniform(*OFFICE_HOURS)
        return self.rng.uniform(0, 86_399)

    def _attachment_sizes(self) -> list[int]:
        rng = self.rng
        if rng.random() >= ATTACHMENT_SHARE:
            return []
        sizes = []
        for _ in range(rng.choice(ATTACHMENTS_PER_EMAIL)):
            if rng.random() < LARGE_ATTACHMENT_SHARE:
                sizes.append(rng.randint(LARGE_ATTACHMENT_MIN, self.max_upload))
            else:
                # Log-uniform: many small documents, fewer large scans and photos.
                low, high = (math.log(bound) for bound in ATTACHMENT_BYTES)
                sizes.append(round(math.exp(rng.uniform(low, high))))
        return sizes

    def _recurring_warnings(self, queue_mailboxes: list[str]) -> None:
        """Warnings on the first two queues on compliant server-side sync, first raised days ago and recurring since."""
        working = [mailbox_id for mailbox_id in queue_mailboxes if self.classes.get(mailbox_id) == "compliant_sss"]
        mailboxes = self.store.table("mailboxes")
        warnings = (
            (
                dataverse.TRACECODE_ATTACHMENT_TOO_LARGE,
                "An email message received by the mailbox {name} couldn't be tracked in Dynamics 365 because one of "
                "its attachments is larger than the maximum file size allowed for the organisation.",
                f"The attachment exceeds maxuploadfilesize ({self.max_upload} bytes).",
                (9, 6, 3, 1),
            ),
            (
                dataverse.TRACECODE_EXCHANGE_THROTTLING,
                "Email for the mailbox {name} is being processed more slowly because Exchange Online is throttling "
                "requests. Server-side synchronization will retry the delayed items automatically.",
                "ErrorServerBusy: The server cannot service this request right now. Try again later.",
                (5, 2, 0),
            ),
        )
        for mailbox_id, (tracecode, text, details, days_ago) in zip(working, warnings, strict=False):
            alert = dataverse.Alert(
                tracecode, text.format(name=mailboxes[mailbox_id]["name"]), details, level=dataverse.TRACE_LEVEL_WARNING
            )
            for back in days_ago:
                moment = self.now - dt.timedelta(days=back, seconds=self.rng.randint(600, 3 * 3600))
                dataverse.raise_alert(self.store, mailbox_id, alert, now=moment)

    # -- outputs ------------------------------------------------------------------------------------
    def truth(self) -> dict[str, Any]:
        counts = dict.fromkeys(CLASSES, 0)
        for klass in self.classes.values():
            counts[klass] += 1
        return {"mailboxes": len(self.classes), "by_classification": counts}

    def router_xml(self) -> str:
        """The legacy router's configuration: incoming and outgoing profiles, one deployment, its mailboxes."""
        org_url = "https://example.crm11.dynamics.com"
        lines = [
            '<?xml version="1.0" encoding="utf-8"?>',
            "<Configuration>",
            "  <SystemConfiguration>",
            "    <MaxThreads>50</MaxThreads>",
            "    <MaxThreadExecution>600000</MaxThreadExecution>",
            "    <SchedulingPeriod>1000</SchedulingPeriod>",
            "    <ConfigRefreshPeriod>5000</ConfigRefreshPeriod>",
            "    <ConfigUpdatePeriod>300000</ConfigUpdatePeriod>",
            "    <LogLevel>1</LogLevel>",
            "  </SystemConfiguration>",
        ]
        for entry in self.router_entries:
            for direction, provider, server in (
                (
                    "Inbound",
                    "Microsoft.Crm.Tools.Email.Providers.ExchangePollingMailboxProvider",
                    "https://mail.example.gov.uk/EWS/Exchange.asmx",
                ),
                ("Outbound", "Microsoft.Crm.Tools.Email.Providers.SmtpPollingSendEmailProvider", "smtp.example.gov.uk"),
            ):
                if entry["kind"] == "forward" and direction == "Outbound":
                    continue
                lines += [
                    "  <ProviderConfiguration>",
                    "    <ProviderAssembly>Microsoft.Crm.Tools.Email.Providers.dll</ProviderAssembly>",
                    f"    <ProviderClass>{provider}</ProviderClass>",
                    f"    <Direction>{direction}</Direction>",
                    f"    <ProfileName>Legacy Exchange {'incoming' if direction == 'Inbound' else 'outgoing'}"
                    "</ProfileName>",
                    f"    <CrmServerUrl>{org_url}</CrmServerUrl>",
                    "    <DeploymentName>Example</DeploymentName>",
                    f"    <EmailServer>{server}</EmailServer>",
                    f"    <EmailUser>{escape(entry['address'])}</EmailUser>",
                    "    <EmailAuthMode>WindowsIntegrated</EmailAuthMode>",
                    f"    <Target>{escape(entry['address'])}</Target>",
                    f"    <CrmObjectType>{entry['kind']}</CrmObjectType>",
                    f"    <CrmObjectName>{escape(entry['name'])}</CrmObjectName>",
                    f"    <MailboxId>{{{entry['id'].upper()}}}</MailboxId>",
                    "  </ProviderConfiguration>",
                ]
        lines.append("</Configuration>")
        return "\n".join(lines) + "\n"


def _sss(profile_id: str, *, act: int, ok: bool, is_queue: bool) -> dict[str, Any]:
    status = 1 if ok else 2
    return {
        "_emailserverprofile_value": profile_id,
        "incomingemaildeliverymethod": 2,
        "outgoingemaildeliverymethod": 2,
        "actdeliverymethod": act,
        "emailrouteraccessapproval": 1,
        "enabledforincomingemail": True,
        "enabledforoutgoingemail": True,
        "enabledforact": act == 1,
        "incomingemailstatus": status,
        "outgoingemailstatus": status,
        "actstatus": status if act == 1 else 0,
        "mailboxstatus": status,
        "testmailboxaccesscompletedon": odata_timestamp(),
    }
