"""Importing Email Router configuration files: record each router as a legacy source, with the
profiles it defines and the mailboxes it still serves, matched to the inventory.

The upload is stored and parsed by a background job (``router_import_job``) within the size
bound of :mod:`migration.router_config` and the job's timeout. A finished import replaces the
source's previous profiles and links in one transaction, classifies the affected inventory
mailboxes again, and is audited.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.core.paginator import Page, Paginator
from django.db import IntegrityError, transaction
from django.db.models import Count, OuterRef, Q, Subquery
from django.db.models.functions import Upper
from django.utils import timezone
from rq.timeouts import JobTimeoutException

from migration.models import (
    ImportStatus,
    InventoryMailbox,
    LegacyMailboxLink,
    LegacyProfile,
    LegacySource,
    LegacySourceKind,
    RouterImport,
)
from migration.router_config import (
    MAX_FILE_BYTES,
    ParsedConfiguration,
    RouterFileError,
    ServedMailbox,
    parse_router_configuration,
)
from migration.services.discovery import inventory_reclassify
from portal.accounts.models import User
from portal.audit.models import Outcome
from portal.audit.services import audit_record
from portal.exceptions import InvalidStateError, PortalError
from portal.queue import enqueue_on_commit

logger = logging.getLogger(__name__)

# A 32 MB file parses in seconds; the rest is writing links. Past this the worker stops the job.
ROUTER_IMPORT_JOB_TIMEOUT = 600
# An import still queued or running after this was lost (worker killed, queue flushed).
STALE_AFTER = dt.timedelta(hours=1)
UNFINISHED = (ImportStatus.QUEUED, ImportStatus.RUNNING)
LINKS_PER_PAGE = 50
SOURCES_PER_PAGE = 50
UNMATCHED_SHOWN = 50
_BATCH = 1000

MESSAGE_NOT_QUEUED = "The background job queue was unavailable, so the file was not read. Upload it again later."
MESSAGE_TIMED_OUT = (
    "Reading the file took longer than the portal allows, so the import stopped. Check it is the "
    "Microsoft.Crm.Tools.EmailAgent.xml file of one router, then upload it again."
)
MESSAGE_UNEXPECTED = (
    "The file could not be imported because of a problem in the portal. Upload it again later; "
    "if it happens again, tell the platform team."
)
MESSAGE_LOST = "The import did not finish within an hour, so it was stopped. Upload the file again."


# --- upload -------------------------------------------------------------------------------------


def router_import_request(
    *,
    actor: User,
    server_name: str,
    file_name: str,
    content: bytes,
    state_file_name: str = "",
    state_content: bytes | None = None,
) -> RouterImport:
    """Store an uploaded configuration for the router ``server_name`` and queue its import.

    The router becomes a legacy source the first time; later uploads for the same server (its name
    compared without regard to case) replace what the previous import recorded once they finish.
    """
    server_name = server_name.strip()
    if not server_name:
        raise PortalError("Enter the name of the Email Router server", field="server_name")
    if len(content) > MAX_FILE_BYTES:
        raise PortalError("The selected file must be smaller than 32MB", field="configuration_file")
    if state_content is not None and len(state_content) > MAX_FILE_BYTES:
        raise PortalError("The selected file must be smaller than 32MB", field="state_file")
    now = timezone.now()
    with transaction.atomic():
        source = _router_source_for_update(actor=actor, name=server_name, now=now)
        _stop_lost_imports(source_id=source.pk, now=now)
        if RouterImport.objects.filter(source=source, status__in=UNFINISHED).exists():
            raise InvalidStateError(
                f"A configuration for {source.name} is already being imported. "
                "Wait for it to finish, then upload the file again.",
                field="configuration_file",
            )
        record = RouterImport.objects.create(
            source=source,
            status=ImportStatus.QUEUED,
            file_name=file_name[:255],
            file_size=len(content),
            file_sha256=hashlib.sha256(content).hexdigest(),
            content=content,
            state_file_name=state_file_name[:255] if state_content is not None else "",
            state_content=state_content,
            uploaded_by=actor,
            uploaded_at=now,
        )
        audit_record(
            actor=actor,
            action="router_import.requested",
            object_type="legacy_source",
            object_id=source.pk,
            after={
                "import": record.pk,
                "file_name": record.file_name,
                "file_size": record.file_size,
                "file_sha256": record.file_sha256,
                "state_file_name": record.state_file_name,
            },
        )
        from migration.jobs import router_import_job

        import_id = record.pk
        enqueue_on_commit(
            router_import_job,
            import_id,
            job_timeout=ROUTER_IMPORT_JOB_TIMEOUT,
            on_enqueue_error=lambda exc: _finish_failed(import_id, message=MESSAGE_NOT_QUEUED, expect=UNFINISHED),
        )
    return record


def _router_source_for_update(*, actor: User, name: str, now: dt.datetime) -> LegacySource:
    source = LegacySource.objects.select_for_update().filter(name__iexact=name).first()
    if source is None:
        try:
            with transaction.atomic():
                source = LegacySource.objects.create(
                    kind=LegacySourceKind.EMAIL_ROUTER, name=name, created_at=now, created_by=actor
                )
        except IntegrityError:  # someone added the same router a moment ago
            source = LegacySource.objects.select_for_update().get(name__iexact=name)
        else:
            audit_record(
                actor=actor,
                action="legacy_source.created",
                object_type="legacy_source",
                object_id=source.pk,
                after={"kind": source.kind, "name": source.name},
            )
    if source.kind != LegacySourceKind.EMAIL_ROUTER:
        raise PortalError(
            f"{source.name} is already recorded as a {source.get_kind_display()}. Enter the Email Router server's name",
            field="server_name",
        )
    return source


def _stop_lost_imports(*, source_id: int, now: dt.datetime) -> None:
    lost = RouterImport.objects.filter(source_id=source_id, status__in=UNFINISHED, uploaded_at__lt=now - STALE_AFTER)
    for import_id in lost.values_list("pk", flat=True):
        _finish_failed(import_id, message=MESSAGE_LOST, expect=UNFINISHED)


def router_import_is_lost(record: RouterImport, *, now: dt.datetime | None = None) -> bool:
    """Still queued or running long after any job for it would have finished or been stopped."""
    return record.status in UNFINISHED and record.uploaded_at < (now or timezone.now()) - STALE_AFTER


# --- the job's work -----------------------------------------------------------------------------


def router_import_run(*, import_id: int) -> RouterImport | None:
    """Claim a queued import, read the file and record what it says. A duplicate job does nothing."""
    claimed = RouterImport.objects.filter(pk=import_id, status=ImportStatus.QUEUED).update(status=ImportStatus.RUNNING)
    if not claimed:
        logger.info("router import %s already claimed or finished", import_id)
        return None
    record = RouterImport.objects.only("pk", "content", "state_content").get(pk=import_id)
    content = bytes(record.content)
    state = bytes(record.state_content) if record.state_content is not None else None
    try:
        parsed = parse_router_configuration(content, state=state)
        return _record_results(import_id, parsed)
    except RouterFileError as error:
        return _finish_failed(import_id, message=error.message, code=error.code)
    except JobTimeoutException:
        _finish_failed(import_id, message=MESSAGE_TIMED_OUT, code="timed_out")
        raise
    except Exception:
        _finish_failed(import_id, message=MESSAGE_UNEXPECTED, code="unexpected")
        raise


def _record_results(import_id: int, parsed: ParsedConfiguration) -> RouterImport | None:
    with transaction.atomic():
        record = RouterImport.objects.select_for_update().defer("content", "state_content").filter(pk=import_id).first()
        if record is None or record.status != ImportStatus.RUNNING:
            return None  # stopped as lost while it ran
        source = LegacySource.objects.select_for_update().get(pk=record.source_id)
        previously_linked = set(
            LegacyMailboxLink.objects.filter(source=source, mailbox__isnull=False).values_list("mailbox_id", flat=True)
        )
        LegacyMailboxLink.objects.filter(source=source).delete()
        LegacyProfile.objects.filter(source=source).delete()

        LegacyProfile.objects.bulk_create(
            (
                LegacyProfile(
                    source=source,
                    router_import=record,
                    name=_fit(profile.name, LegacyProfile, "name") or "(no name)",
                    direction=_fit(profile.direction, LegacyProfile, "direction"),
                    protocol=_fit(profile.protocol, LegacyProfile, "protocol"),
                    server=_fit(profile.server, LegacyProfile, "server"),
                    authentication=_fit(profile.authentication, LegacyProfile, "authentication"),
                    settings=profile.settings,
                )
                for profile in parsed.profiles
            ),
            batch_size=_BATCH,
        )
        matches, match_warnings = _match_inventory(parsed.mailboxes)
        LegacyMailboxLink.objects.bulk_create(
            (
                LegacyMailboxLink(
                    source=source,
                    router_import=record,
                    mailbox_id=matches.get(served.address.lower()),
                    email_address=served.address,
                    object_type=_fit(served.object_type, LegacyMailboxLink, "object_type"),
                    object_name=_fit(served.name, LegacyMailboxLink, "object_name"),
                    directions=list(served.directions),
                    profile_names=list(served.profiles),
                    raw=_raw(served),
                )
                for served in parsed.mailboxes
            ),
            batch_size=_BATCH,
        )
        matched = {mailbox_id for mailbox_id in matches.values() if mailbox_id is not None}
        # Mailboxes this router no longer lists are classified again too, so they lose the router.
        inventory_reclassify(mailbox_ids=sorted(matched | previously_linked))

        record.status = ImportStatus.SUCCEEDED
        record.finished_at = timezone.now()
        record.error = ""
        record.system_configuration = {
            "settings": parsed.system,
            "deployments": [
                {"name": d.name, "url": d.url, "mailboxes": d.mailboxes, "settings": d.settings}
                for d in parsed.deployments
            ],
            "state_entries": parsed.state_entries,
        }
        record.warnings = [*parsed.warnings, *match_warnings]
        record.profiles_found = len(parsed.profiles)
        record.mailboxes_found = len(parsed.mailboxes)
        record.mailboxes_matched = len(matched)
        record.save(
            update_fields=[
                "status",
                "finished_at",
                "error",
                "system_configuration",
                "warnings",
                "profiles_found",
                "mailboxes_found",
                "mailboxes_matched",
            ]
        )
        audit_record(
            actor=None,
            action="router_import.succeeded",
            object_type="legacy_source",
            object_id=source.pk,
            before={"mailboxes_linked": len(previously_linked)},
            after={
                "import": record.pk,
                "profiles": record.profiles_found,
                "mailboxes": record.mailboxes_found,
                "matched": record.mailboxes_matched,
                "warnings": len(record.warnings),
            },
            reason=f"{record.file_name} (SHA-256 {record.file_sha256})",
        )
    return record


def _finish_failed(
    import_id: int,
    *,
    message: str,
    code: str = "",
    expect: Sequence[str] = (ImportStatus.RUNNING,),
) -> RouterImport | None:
    with transaction.atomic():
        record = RouterImport.objects.select_for_update().defer("content", "state_content").filter(pk=import_id).first()
        if record is None or record.status not in expect:
            return record
        before = record.status
        record.status = ImportStatus.FAILED
        record.finished_at = timezone.now()
        record.error = message
        record.save(update_fields=["status", "finished_at", "error"])
        audit_record(
            actor=None,
            action="router_import.failed",
            object_type="legacy_source",
            object_id=record.source_id,
            before={"import": record.pk, "status": before},
            after={"import": record.pk, "status": record.status, "code": code},
            outcome=Outcome.FAILURE,
            reason=message,
        )
    return record


def _fit(value: str, model: type, field_name: str) -> str:
    return value[: model._meta.get_field(field_name).max_length]


def _raw(served: ServedMailbox) -> dict[str, Any]:
    raw = dict(served.raw)
    if served.mailbox_id is not None:
        raw["mailbox_id"] = str(served.mailbox_id)
    if served.deployment:
        raw["deployment"] = served.deployment
    return raw


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _match_inventory(served: Iterable[ServedMailbox]) -> tuple[dict[str, int | None], list[str]]:
    """Inventory mailbox per served address (lower case): by mailbox id when the file gives one that
    the inventory knows, otherwise by address without regard to case. Removed mailboxes never match."""
    served = list(served)
    live = InventoryMailbox.objects.filter(removed_at__isnull=True)
    by_id: dict[Any, int] = {}
    for chunk in _chunks([m.mailbox_id for m in served if m.mailbox_id is not None], 5000):
        by_id.update(live.filter(dataverse_id__in=chunk).values_list("dataverse_id", "pk"))
    by_address: dict[str, list[int]] = defaultdict(list)
    for chunk in _chunks(sorted({m.address.upper() for m in served}), 5000):
        rows = (
            live.annotate(address_upper=Upper("email_address"))
            .filter(address_upper__in=chunk)
            .order_by("pk")
            .values_list("address_upper", "pk")
        )
        for address, pk in rows:
            by_address[address].append(pk)
    matches: dict[str, int | None] = {}
    warnings: list[str] = []
    for mailbox in served:
        if mailbox.mailbox_id is not None and mailbox.mailbox_id in by_id:
            matches[mailbox.address.lower()] = by_id[mailbox.mailbox_id]
            continue
        candidates = by_address.get(mailbox.address.upper(), [])
        if len(candidates) > 1:
            warnings.append(
                f"{mailbox.address} is the address of {len(candidates)} inventory mailboxes, so it was not linked "
                "to any of them."
            )
        matches[mailbox.address.lower()] = candidates[0] if len(candidates) == 1 else None
    return matches, warnings


# --- reads for the pages ------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceRow:
    source: LegacySource
    served: int
    matched: int
    last_import: RouterImport | None


def legacy_source_page(page_number: Any) -> tuple[Page, list[SourceRow]]:
    """One page of legacy sources with their counts and latest import: three queries at any size."""
    latest = RouterImport.objects.filter(source=OuterRef("pk")).order_by("-uploaded_at", "-id").values("pk")[:1]
    sources = LegacySource.objects.annotate(
        served=Count("links"),
        matched=Count("links", filter=Q(links__mailbox__isnull=False)),
        last_import_id=Subquery(latest),
    ).order_by("name", "pk")
    page = Paginator(sources, SOURCES_PER_PAGE).get_page(page_number)
    imports = RouterImport.objects.defer("content", "state_content", "system_configuration", "warnings").in_bulk(
        [source.last_import_id for source in page.object_list if source.last_import_id]
    )
    rows = [
        SourceRow(
            source=source,
            served=source.served,
            matched=source.matched,
            last_import=imports.get(source.last_import_id),
        )
        for source in page.object_list
    ]
    return page, rows


@dataclass(frozen=True)
class SourceDetail:
    source: LegacySource
    last_import: RouterImport | None
    current_import: RouterImport | None  # the import whose profiles and links are shown
    profiles: list[LegacyProfile]
    served: int
    matched: int
    links: Page


def legacy_source_detail(source_id: int, *, page_number: Any, unmatched_only: bool) -> SourceDetail | None:
    source = LegacySource.objects.filter(pk=source_id).first()
    if source is None:
        return None
    imports = RouterImport.objects.filter(source=source).defer("content", "state_content")
    last_import = imports.order_by("-uploaded_at", "-id").first()
    profiles = list(LegacyProfile.objects.filter(source=source).order_by("direction", "name", "pk"))
    counts = LegacyMailboxLink.objects.filter(source=source).aggregate(
        served=Count("pk"), matched=Count("pk", filter=Q(mailbox__isnull=False))
    )
    links = LegacyMailboxLink.objects.filter(source=source).select_related("mailbox").defer("raw")
    if unmatched_only:
        links = links.filter(mailbox__isnull=True)
    page = Paginator(links.order_by("email_address", "pk"), LINKS_PER_PAGE).get_page(page_number)
    current = imports.filter(status=ImportStatus.SUCCEEDED).order_by("-finished_at", "-id").first()
    return SourceDetail(
        source=source,
        last_import=last_import,
        current_import=current,
        profiles=profiles,
        served=counts["served"],
        matched=counts["matched"],
        links=page,
    )


@dataclass(frozen=True)
class ImportDetail:
    record: RouterImport
    in_progress: bool
    lost: bool
    is_current: bool  # its profiles and links are the ones the source shows now
    unmatched: list[LegacyMailboxLink]
    unmatched_count: int
    deployments: list[dict[str, Any]]
    system_settings: dict[str, Any]


def router_import_detail(import_id: int) -> ImportDetail | None:
    record = (
        RouterImport.objects.select_related("source", "uploaded_by")
        .defer("content", "state_content")
        .filter(pk=import_id)
        .first()
    )
    if record is None:
        return None
    lost = router_import_is_lost(record)
    unmatched = (
        LegacyMailboxLink.objects.filter(router_import=record, mailbox__isnull=True)
        .defer("raw")
        .order_by("email_address", "pk")
    )
    unmatched_count = unmatched.count() if record.status == ImportStatus.SUCCEEDED else 0
    # Imports replace each other in the order they finish, so the latest to succeed is on show.
    is_current = (
        record.status == ImportStatus.SUCCEEDED
        and not RouterImport.objects.filter(
            source_id=record.source_id, status=ImportStatus.SUCCEEDED, finished_at__gt=record.finished_at
        ).exists()
    )
    configuration = record.system_configuration or {}
    return ImportDetail(
        record=record,
        in_progress=record.status in UNFINISHED and not lost,
        lost=lost,
        is_current=is_current,
        unmatched=list(unmatched[:UNMATCHED_SHOWN]) if unmatched_count else [],
        unmatched_count=unmatched_count,
        deployments=list(configuration.get("deployments", [])),
        system_settings=dict(configuration.get("settings", {})),
    )
