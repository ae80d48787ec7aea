"""Reading an Email Router configuration file safely, whatever version of the router wrote it.

``Microsoft.Crm.Tools.EmailAgent.xml`` has a ``<Configuration>`` root, a
``<SystemConfiguration>`` block of router settings and one
``<ProviderConfiguration>`` per mailbox and direction (incoming Exchange/EWS or
POP3, outgoing SMTP or Exchange), each naming its email server, authentication,
Dynamics 365 deployment and the user, queue or forward mailbox it serves. Router
versions differ in element names and nesting, and some files describe profiles,
deployments and their users, queues and forward mailboxes as separate elements;
both shapes are read. Elements the portal does not know become warnings, never
failures.

The file comes from outside, so reading it is bounded and inert:

* size is checked before anything else, and the bytes are sniffed (binary,
  archive, not XML, encoding) before an XML parser sees them;
* defusedxml's expat parser runs with DTDs forbidden, so no entity is ever
  declared, expanded or fetched: nothing in a file can make the portal read a
  file or open a connection;
* the parser refuses pathological nesting depth and element counts as it goes,
  and provider records are reduced to small dictionaries as soon as they close,
  so memory stays proportional to what is kept.

Passwords and other secrets in the file are never kept: their values are
replaced by ``[removed]``.
"""

from __future__ import annotations

import codecs
import functools
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit
from xml.etree.ElementTree import ParseError
from xml.parsers.expat import errors as expat_errors

from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import DefusedXMLParser

from portal.exceptions import PortalError

# Microsoft's migration wizard accepted up to four routers' files in 32 MB.
MAX_FILE_BYTES = 32 * 1024 * 1024
# Real files are four or five levels deep; anything near this is an attack or not a router file.
MAX_DEPTH = 32
MAX_ELEMENTS = 1_000_000
# Provider records are reduced to dictionaries as they close; this bounds everything else held at once.
MAX_HELD_ELEMENTS = 200_000
MAX_WARNINGS = 200
MAX_RAW_VALUE = 1000
MAX_RAW_PROVIDERS = 4
REMOVED = "[removed]"
_CHUNK = 1 << 20

CONFIGURATION_FILE = "The configuration file"
STATE_FILE = "The SystemState file"

INCOMING = "incoming"
OUTGOING = "outgoing"


class RouterFileError(PortalError):
    """The file cannot be imported; ``message`` says why in words a migration lead can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouterProfile:
    name: str
    direction: str  # incoming / outgoing / "" when the file does not say
    protocol: str
    server: str
    authentication: str
    settings: dict[str, Any]


@dataclass(frozen=True)
class RouterDeployment:
    name: str
    url: str
    settings: dict[str, str]
    mailboxes: int


@dataclass(frozen=True)
class ServedMailbox:
    address: str
    object_type: str  # user / queue / forward / "" when the file does not say
    name: str
    directions: tuple[str, ...]
    profiles: tuple[str, ...]
    mailbox_id: uuid.UUID | None
    deployment: str
    raw: dict[str, Any]


@dataclass(frozen=True)
class ParsedConfiguration:
    system: dict[str, str]
    profiles: tuple[RouterProfile, ...]
    deployments: tuple[RouterDeployment, ...]
    mailboxes: tuple[ServedMailbox, ...]
    warnings: tuple[str, ...]
    state_entries: int = 0


# --- element vocabulary -------------------------------------------------------------------------


def _key(name: str) -> str:
    """Element names compared without namespace, case, underscores or hyphens."""
    local = name.rsplit("}", 1)[-1].rsplit(":", 1)[-1]
    return re.sub(r"[^0-9a-z]", "", local.lower())


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1]


ROOT = "configuration"
SYSTEM_BLOCKS = frozenset({"systemconfiguration", "systemsettings"})
SYSTEM_SETTINGS = frozenset(
    {"maxthreads", "maxthreadexecution", "schedulingperiod", "configrefreshperiod", "configupdateperiod", "loglevel"}
)
OVERRIDE_GROUPS = frozenset({"provideroverrides", "overrides", "providersettings", "advancedsettings"})
PROVIDER_RECORDS = frozenset({"providerconfiguration", "provider", "emailprovider", "providerconfig"})
MAILBOX_RECORDS = {
    "user": "user",
    "systemuser": "user",
    "queue": "queue",
    "forwardmailbox": "forward",
    "mailbox": "",
}
PROFILE_RECORDS = {
    "incomingprofile": INCOMING,
    "outgoingprofile": OUTGOING,
    "incomingconfigurationprofile": INCOMING,
    "outgoingconfigurationprofile": OUTGOING,
    "profile": "",
    "configurationprofile": "",
}
RECORDS = PROVIDER_RECORDS | MAILBOX_RECORDS.keys() | PROFILE_RECORDS.keys()
DEPLOYMENTS = frozenset({"deployment", "crmdeployment"})
CONTAINERS = frozenset(
    {
        "providerconfigurations",
        "providers",
        "profiles",
        "configurationprofiles",
        "incomingprofiles",
        "outgoingprofiles",
        "deployments",
        "users",
        "queues",
        "forwardmailboxes",
        "mailboxes",
    }
)

_ALIASES: dict[str, frozenset[str]] = {
    "direction": frozenset({"direction", "providerdirection"}),
    "provider_class": frozenset({"providerclass", "providertype", "class"}),
    "provider_assembly": frozenset({"providerassembly", "assembly"}),
    "profile": frozenset({"profilename", "profile", "configurationprofile", "configurationprofilename"}),
    "incoming_profile": frozenset({"incomingprofile", "incomingprofilename", "incomingconfigurationprofile"}),
    "outgoing_profile": frozenset({"outgoingprofile", "outgoingprofilename", "outgoingconfigurationprofile"}),
    "server": frozenset(
        {
            "emailserver",
            "server",
            "emailserverurl",
            "serverurl",
            "serverlocation",
            "emailserverlocation",
            "ewsurl",
            "exchangeserver",
            "smtpserver",
            "pop3server",
            "host",
            "hostname",
        }
    ),
    "protocol": frozenset({"emailservertype", "servertype", "emailprotocol", "protocol", "emailtype"}),
    "authentication": frozenset(
        {
            "emailauthmode",
            "emailauthenticationtype",
            "emailauthentication",
            "authenticationtype",
            "authenticationmode",
            "authmode",
            "authentication",
        }
    ),
    "access_credentials": frozenset({"emailaccesscredentials", "accesscredentials", "credentials", "accesstype"}),
    "email_user": frozenset({"emailuser", "emailusername", "username", "emailaccount"}),
    "address": frozenset(
        {
            "target",
            "emailaddress",
            "smtpaddress",
            "address",
            "mailboxaddress",
            "primarysmtpaddress",
            "email",
            "internalemailaddress",
        }
    ),
    "object_type": frozenset({"crmobjecttype", "objecttype", "mailboxtype", "recipienttype", "ownertype"}),
    "object_name": frozenset({"crmobjectname", "objectname", "displayname", "fullname", "queuename", "mailboxname"}),
    "name": frozenset({"name"}),
    "type": frozenset({"type"}),
    "mailbox_id": frozenset({"mailboxid", "crmmailboxid", "mailboxguid"}),
    "object_id": frozenset({"crmobjectid", "objectid", "userid", "queueid", "systemuserid", "ownerid"}),
    "deployment": frozenset(
        {"deploymentname", "deployment", "organizationname", "organization", "crmorganization", "orgname"}
    ),
    "deployment_url": frozenset({"crmserverurl", "crmurl", "deploymenturl", "organizationurl", "crmserver"}),
    "port": frozenset({"emailport", "port", "serverport"}),
    "ssl": frozenset({"emailusessl", "usessl", "ssl", "usesecureconnection", "enablessl"}),
    "crm_authentication": frozenset({"crmauthmode", "crmauthenticationtype", "crmauthentication"}),
    "crm_user": frozenset({"crmuser", "crmusername"}),
    "batch_size": frozenset({"emailprocessingbatchsize", "batchsize"}),
    "source": frozenset({"source"}),
    "enabled": frozenset({"enabled", "isenabled", "state", "status"}),
}
_CANONICAL = {alias: canonical for canonical, aliases in _ALIASES.items() for alias in aliases}
_PROFILE_SETTING_FIELDS = (
    "provider_class",
    "provider_assembly",
    "port",
    "ssl",
    "access_credentials",
    "crm_authentication",
    "batch_size",
)


def _is_secret(key: str) -> bool:
    return "password" in key or "secret" in key or key.endswith(("encryptionkey", "accesstoken", "clientkey"))


# --- messages -----------------------------------------------------------------------------------


def _messages(label: str, *, state_file: bool) -> dict[str, str]:
    upload = (
        "Upload Microsoft.Crm.Tools.EmailAgent.SystemState.xml as the Email Router wrote it"
        if state_file
        else "Upload Microsoft.Crm.Tools.EmailAgent.xml as the Email Router wrote it"
    )
    return {
        "too_big": f"{label} must be smaller than 32MB",
        "empty": f"{label} is empty. {upload}",
        "archive": f"{label} is a compressed archive, not XML. Extract the file from it and upload that",
        "binary": f"{label} is not a text file, so it cannot be an Email Router file. {upload}",
        "not_xml": f"{label} is not XML. {upload}",
        "utf16_no_bom": f"{label} looks like UTF-16 text without a byte order mark, so the portal cannot tell "
        "how to read it. Save it again with the encoding UTF-8 and upload it again",
        "dtd": f"{label} contains a document type declaration (<!DOCTYPE>). Email Router files never have one, "
        f"and the portal does not read files that do. {upload}",
        "entity": f"{label} declares XML entities (<!ENTITY>), which can be used to make a server read other "
        f"files or expand without limit. The portal did not read it. {upload}",
        "external_reference": f"{label} refers to an external file or address. The portal did not read it. {upload}",
        "state_as_configuration": f"{label} is the Email Router's SystemState file. Upload "
        "Microsoft.Crm.Tools.EmailAgent.xml as the configuration file, and the SystemState file in its own field",
        "configuration_as_state": f"{label} is an Email Router configuration, not its SystemState file. Upload "
        "Microsoft.Crm.Tools.EmailAgent.SystemState.xml in this field, or leave it empty",
        "no_providers": f"{label} has no <ProviderConfiguration> entries, so it lists no profiles or mailboxes to "
        "import. Check it comes from a router that serves mailboxes",
    }


def _fail(label: str, code: str, message: str | None = None, *, state_file: bool = False) -> RouterFileError:
    return RouterFileError(code, message or _messages(label, state_file=state_file)[code])


# --- byte-level checks ----------------------------------------------------------------------------

_MAGIC = (
    (b"PK\x03\x04", "archive"),
    (b"PK\x05\x06", "archive"),
    (b"\x1f\x8b", "archive"),
    (b"7z\xbc\xaf\x27\x1c", "archive"),
    (b"Rar!", "archive"),
    (b"%PDF", "binary"),
    (b"MZ", "binary"),
    (b"\x89PNG", "binary"),
    (b"\xd0\xcf\x11\xe0", "binary"),
)
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_NOT_SPACE = re.compile(rb"[^ \t\r\n]")
_DECLARED = re.compile(r"""\A<\?xml\s[^>]*?\bencoding\s*=\s*(["'])(.*?)\1""")
# What expat reads natively or through Python's single-byte codecs; anything else is refused.
_READABLE = frozenset({"utf-8", "ascii", "iso8859-1", "cp1252", "utf-16", "utf-16-le", "utf-16-be"})


@dataclass(frozen=True)
class Sniffed:
    encoding: str  # the effective encoding, as codecs names it
    bom: int  # bytes of byte order mark


def _looks_utf16(head: bytes) -> bool:
    even, odd = head[0:256:2], head[1:256:2]
    if not even or not odd:
        return False
    return (odd.count(0) > 0.8 * len(odd) and even.count(0) == 0) or (
        even.count(0) > 0.8 * len(even) and odd.count(0) == 0
    )


def _normalise_encoding(name: str) -> str | None:
    try:
        return codecs.lookup(name.strip()).name
    except (LookupError, ValueError):
        return None


def _first_bad_byte(data: bytes, start: int, encoding: str) -> int | None:
    decoder = codecs.getincrementaldecoder(encoding)()
    view = memoryview(data)
    for offset in range(start, len(data), _CHUNK):
        chunk = bytes(view[offset : offset + _CHUNK])
        try:
            decoder.decode(chunk, final=offset + _CHUNK >= len(data))
        except UnicodeDecodeError as error:
            return offset + error.start
    return None


def sniff(data: bytes, *, label: str = CONFIGURATION_FILE, state_file: bool = False) -> Sniffed:
    """The checks that need no XML parser: size, emptiness, binary content, XML at all, encoding.

    Cheap enough to run while the upload page is answering, so most wrong files
    are refused there; the background import runs them again before parsing.
    """
    fail = functools.partial(_fail, label, state_file=state_file)
    if len(data) > MAX_FILE_BYTES:
        raise fail("too_big")
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise fail("bad_encoding", f"{label} is UTF-32 text, which the portal does not read. Save it as UTF-8")
    if data.startswith(codecs.BOM_UTF8):
        encoding, bom = "utf-8", len(codecs.BOM_UTF8)
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding, bom = "utf-16", 2
    else:
        encoding, bom = "", 0
    head = data[bom : bom + 4096]
    if encoding == "utf-16":
        codec = "utf-16-le" if data.startswith(codecs.BOM_UTF16_LE) else "utf-16-be"
        text_head = head[: len(head) - len(head) % 2].decode(codec, errors="replace")
        if not text_head.strip(" \t\r\n") and len(data) <= bom + len(head):
            raise fail("empty")
    else:
        if not encoding:
            for magic, code in _MAGIC:
                if data.startswith(magic):
                    raise fail(code)
        if b"\x00" in head:
            raise fail("utf16_no_bom" if not encoding and _looks_utf16(head) else "binary")
        if _CONTROL.search(head):
            raise fail("binary")
        first = _NOT_SPACE.search(data, bom)
        if first is None:
            raise fail("empty")
        if data[first.start() : first.start() + 1] != b"<":
            raise fail("not_xml")
        text_head = data[bom : bom + 512].decode("latin-1")
    if not text_head.lstrip(" \t\r\n").startswith("<"):
        raise fail("not_xml")

    declared_match = _DECLARED.match(text_head)
    declared = declared_match.group(2) if declared_match else None
    normalised = _normalise_encoding(declared) if declared is not None else None
    if declared is not None and normalised not in _READABLE:
        raise fail(
            "bad_encoding",
            f"{label} says its encoding is {declared[:40]}, which the portal does not read. "
            "Save it with the encoding UTF-8 and upload it again",
        )
    if encoding == "utf-16":
        if normalised is not None and not normalised.startswith("utf-16"):
            raise fail(
                "bad_encoding",
                f"{label} is UTF-16 text but says its encoding is {declared}. "
                "Save it with the encoding UTF-8 and upload it again",
            )
        return Sniffed(encoding="utf-16", bom=bom)
    if normalised is not None and normalised.startswith("utf-16"):
        raise fail(
            "bad_encoding",
            f"{label} says its encoding is {declared}, but it is not UTF-16 text with a byte order mark. "
            "Save it with the encoding UTF-8 and upload it again",
        )
    if encoding == "utf-8" and normalised not in (None, "utf-8"):
        raise fail(
            "bad_encoding",
            f"{label} starts with a UTF-8 byte order mark but says its encoding is {declared}. "
            "Save it with the encoding UTF-8 and upload it again",
        )
    effective = normalised or "utf-8"
    bad = _first_bad_byte(data, bom, effective)
    if bad is not None:
        if declared is None:
            raise fail(
                "undeclared_encoding",
                f"{label} does not say what encoding it uses and is not UTF-8 (the first byte that is not "
                f"UTF-8 is at position {bad:,}). Save it with the encoding UTF-8 and upload it again",
            )
        raise fail(
            "wrong_encoding",
            f"{label} says its encoding is {declared} but contains bytes that are not {declared} (the first "
            f"at position {bad:,}). Save it with the encoding UTF-8 and upload it again",
        )
    return Sniffed(encoding=effective, bom=bom)


# --- bounded, inert XML parsing -----------------------------------------------------------------


class _Node:
    __slots__ = ("attrib", "children", "has_elements", "is_record", "key", "line", "name", "parts")

    def __init__(self, name: str, attrib: dict[str, str], line: int) -> None:
        self.name = name
        self.key = _key(name)
        self.attrib = attrib
        self.children: list[_Node] = []
        self.parts: list[str] = []
        self.has_elements = False
        self.is_record = False
        self.line = line

    @property
    def text(self) -> str:
        return "".join(self.parts).strip()

    @property
    def is_leaf(self) -> bool:
        return not self.has_elements and not self.attrib


def _size(node: _Node) -> int:
    size, pending = 0, [node]
    while pending:
        current = pending.pop()
        size += 1
        pending.extend(current.children)
    return size


class _BoundedTarget:
    """An ElementTree parser target that enforces depth and element limits and streams records out."""

    def __init__(
        self,
        *,
        label: str,
        check_root: Callable[[_Node], None],
        on_record: Callable[[_Node, list[_Node]], None] | None = None,
    ) -> None:
        self.label = label
        self.check_root = check_root
        self.on_record = on_record
        self.stack: list[_Node] = []
        self.root: _Node | None = None
        self.count = 0
        self.held = 0
        self.records_open = 0
        self.locator: Any = None

    def line(self) -> int:
        return int(self.locator.CurrentLineNumber) if self.locator is not None else 0

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        self.count += 1
        self.held += 1
        if self.count > MAX_ELEMENTS or self.held > MAX_HELD_ELEMENTS:
            raise RouterFileError(
                "too_many_elements",
                f"{self.label} has far more elements than an Email Router file for four routers "
                f"(line {self.line():,}). The portal stopped reading it",
            )
        if len(self.stack) >= MAX_DEPTH:
            raise RouterFileError(
                "too_deep",
                f"{self.label} nests elements more than {MAX_DEPTH} levels deep (line {self.line():,}). "
                "Email Router files are a few levels deep, so the portal stopped reading it",
            )
        node = _Node(_local(tag), {_local(k): v for k, v in attrib.items()}, self.line())
        if self.stack:
            self.stack[-1].has_elements = True
            self.stack[-1].parts.clear()
        else:
            self.check_root(node)
            self.root = node
        if self.on_record is not None and not self.records_open and node.key in RECORDS:
            node.is_record = True
            self.records_open += 1
        self.stack.append(node)

    def data(self, text: str) -> None:
        node = self.stack[-1] if self.stack else None
        if node is not None and not node.has_elements:
            node.parts.append(text)

    def end(self, tag: str) -> None:
        node = self.stack.pop()
        if node.is_record:
            self.records_open -= 1
            # A same-named leaf (<Provider>SMTP</Provider>) is a field of its parent, not a record.
            if not node.is_leaf and self.on_record is not None:
                self.on_record(node, self.stack)
                self.held -= _size(node)
                return
        if self.stack:
            self.stack[-1].children.append(node)

    def close(self) -> _Node | None:
        return self.root


def _contains_entity_declaration(data: bytes) -> bool:
    needle = "<!ENTITY"
    return any(needle.encode(codec) in data for codec in ("ascii", "utf-16-le", "utf-16-be"))


def _parse(data: bytes, *, label: str, target: _BoundedTarget) -> _Node:
    state_file = label == STATE_FILE
    sniff(data, label=label, state_file=state_file)
    parser = DefusedXMLParser(target=target, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    target.locator = parser.parser
    at_end = False
    view = memoryview(data)
    try:
        for offset in range(0, len(data), _CHUNK):
            parser.feed(bytes(view[offset : offset + _CHUNK]))
        at_end = True
        root = parser.close()
    except DTDForbidden:
        code = "entity" if _contains_entity_declaration(data) else "dtd"
        raise _fail(label, code, state_file=state_file) from None
    except EntitiesForbidden:
        raise _fail(label, "entity", state_file=state_file) from None
    except ExternalReferenceForbidden:
        raise _fail(label, "external_reference", state_file=state_file) from None
    except ParseError as error:
        raise _parse_error(error, label=label, at_end=at_end) from None
    if root is None:
        raise _fail(label, "empty", state_file=state_file)
    return root


_TRUNCATION_CODES = frozenset(
    {
        expat_errors.codes[expat_errors.XML_ERROR_NO_ELEMENTS],
        expat_errors.codes[expat_errors.XML_ERROR_UNCLOSED_TOKEN],
        expat_errors.codes[expat_errors.XML_ERROR_PARTIAL_CHAR],
        expat_errors.codes[expat_errors.XML_ERROR_UNCLOSED_CDATA_SECTION],
    }
)
_ENCODING_CODES = frozenset(
    {
        expat_errors.codes[expat_errors.XML_ERROR_UNKNOWN_ENCODING],
        expat_errors.codes[expat_errors.XML_ERROR_INCORRECT_ENCODING],
    }
)
_UNDEFINED_ENTITY = expat_errors.codes[expat_errors.XML_ERROR_UNDEFINED_ENTITY]


def _parse_error(error: ParseError, *, label: str, at_end: bool) -> RouterFileError:
    code = getattr(error, "code", None)
    line, column = getattr(error, "position", (0, 0))
    if at_end and code in _TRUNCATION_CODES:
        return RouterFileError(
            "truncated",
            f"{label} ends before its XML is complete (line {line:,}). It may have been cut off when it was "
            "copied. Upload the complete file",
        )
    if code in _ENCODING_CODES:
        return RouterFileError(
            "wrong_encoding",
            f"{label} says it uses an encoding that does not match its content. "
            "Save it with the encoding UTF-8 and upload it again",
        )
    if code == _UNDEFINED_ENTITY:
        return RouterFileError(
            "undefined_entity",
            f"{label} uses an entity that is not defined (line {line:,}, column {column + 1:,}). The portal "
            "reads only XML's own entities, such as &amp;. Upload the file the Email Router wrote",
        )
    reason = expat_errors.messages.get(code, "not well-formed") if code else "not well-formed"
    return RouterFileError(
        "malformed",
        f"{label} is not well-formed XML: {reason} on line {line:,}, column {column + 1:,}. "
        "Upload the file the Email Router wrote, without edits",
    )


# --- warnings -----------------------------------------------------------------------------------


class _Warnings:
    def __init__(self) -> None:
        # (parent, element, kept) -> [count, first line]
        self._unknown: dict[tuple[str, str, bool], list[int]] = {}
        self._notes: dict[str, None] = {}

    def unknown(self, element: str, parent: str, line: int, *, kept: bool = True) -> None:
        seen = self._unknown.setdefault((parent, element, kept), [0, line])
        seen[0] += 1

    def note(self, message: str) -> None:
        self._notes.setdefault(message, None)

    def render(self) -> tuple[str, ...]:
        items = []
        for (parent, element, kept), (count, line) in self._unknown.items():
            times = f", and {count - 1:,} more times" if count > 1 else ""
            what = "its value is kept with the raw fields" if kept else "it was skipped"
            items.append(f"Unknown element <{element}> inside <{parent}> (line {line:,}{times}): {what}.")
        items.extend(self._notes)
        if len(items) > MAX_WARNINGS:
            extra = len(items) - MAX_WARNINGS
            items = [*items[:MAX_WARNINGS], f"And {extra:,} more warnings."]
        return tuple(items)


# --- reading records ----------------------------------------------------------------------------


@dataclass
class _Fields:
    """A record's values by canonical name (first occurrence wins) and as written (secrets removed)."""

    values: dict[str, str] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)


def _leaves(node: _Node, prefix: str = "", in_overrides: bool = False) -> Iterator[tuple[str, str, str, bool, int]]:
    """(path as written, key, value, inside an override group, line) for every value under ``node``."""
    for name, value in node.attrib.items():
        yield f"{prefix}{name}", _key(name), value.strip(), in_overrides, node.line
    for child in node.children:
        path = f"{prefix}{child.name}"
        if child.is_leaf:
            yield path, child.key, child.text, in_overrides, child.line
        else:
            yield from _leaves(child, f"{path}.", in_overrides or child.key in OVERRIDE_GROUPS)


def _read_fields(node: _Node, warnings: _Warnings, *, extra: dict[str, str] | None = None) -> _Fields:
    fields = _Fields()
    for path, key, value, in_overrides, line in _leaves(node):
        secret = _is_secret(key)
        shown = REMOVED if secret and value else value[:MAX_RAW_VALUE]
        fields.raw.setdefault(path, shown)
        if secret:
            continue
        if in_overrides:
            fields.overrides.setdefault(path.split(".", 1)[-1], shown)
            continue
        canonical = (extra or {}).get(key) or _CANONICAL.get(key)
        if canonical is None:
            warnings.unknown(path.rsplit(".", 1)[-1], node.name, line)
            continue
        if value and canonical not in fields.values:
            fields.values[canonical] = value
    return fields


def _direction(value: str, provider_class: str = "") -> str:
    word = _key(value)
    if word in {"inbound", "incoming", "in", "receive", "receiving", "incomingemail"}:
        return INCOMING
    if word in {"outbound", "outgoing", "out", "send", "sending", "outgoingemail"}:
        return OUTGOING
    cls = _key(provider_class)
    if "send" in cls or "smtp" in cls:
        return OUTGOING
    if "mailbox" in cls or "pop" in cls or "imap" in cls or "receive" in cls:
        return INCOMING
    return ""


def _protocol(explicit: str, provider_class: str, server: str) -> str:
    where = server.lower()
    for probe in (_key(explicit), _key(provider_class)):
        if not probe:
            continue
        if "pop" in probe:
            return "POP3"
        if "imap" in probe:
            return "IMAP"
        if "smtp" in probe:
            return "SMTP"
        if "exchangeonline" in probe or "office365" in probe or "outlook.office365.com" in where:
            return "Exchange Online"
        if "ews" in probe or "webservice" in probe or "/ews/" in where:
            return "Exchange Web Services"
        if "exchange" in probe:
            return "Exchange"
        if probe == _key(explicit):
            return explicit.strip()
    if "outlook.office365.com" in where:
        return "Exchange Online"
    if "/ews/" in where:
        return "Exchange Web Services"
    return ""


_OBJECT_TYPES = {
    "user": "user",
    "systemuser": "user",
    "8": "user",
    "queue": "queue",
    "2020": "queue",
    "forward": "forward",
    "forwardmailbox": "forward",
    "forwardingmailbox": "forward",
}
_ADDRESS = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+$")


def _address(value: str) -> str | None:
    text = value.strip()
    lowered = text.lower()
    for prefix in ("smtp:", "mailto:"):
        if lowered.startswith(prefix):
            text = text[len(prefix) :].strip()
    return text if len(text) <= 320 and _ADDRESS.match(text) else None


def _mailbox_id(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value.strip().strip("{}"))
    except ValueError:
        return None


def _host(server: str) -> str:
    if "://" in server:
        return urlsplit(server).hostname or server
    return server


def _profile_name_for(direction: str, protocol: str, server: str) -> str:
    """A name for a profile the file does not name, such as "Incoming POP3 on pop.example.gov.uk"."""
    words = [direction.capitalize() or "Email", protocol or "email"]
    if server:
        words += ["on", _host(server)]
    return " ".join(words)


@dataclass
class _ProfileDraft:
    name: str
    direction: str
    protocol: str = ""
    server: str = ""
    authentication: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    servers: dict[str, None] = field(default_factory=dict)
    mailboxes: int = 0


@dataclass
class _MailboxDraft:
    address: str
    object_type: str = ""
    name: str = ""
    directions: dict[str, None] = field(default_factory=dict)
    profiles: dict[str, None] = field(default_factory=dict)
    mailbox_id: uuid.UUID | None = None
    deployment: str = ""
    providers: list[dict[str, str]] = field(default_factory=list)
    state: dict[str, str] | None = None


@dataclass
class _DeploymentDraft:
    name: str
    url: str
    settings: dict[str, str] = field(default_factory=dict)
    addresses: set[str] = field(default_factory=set)


class _Reader:
    """Turns records (streamed out of the parser) and the remaining tree into the typed result."""

    def __init__(self) -> None:
        self.warnings = _Warnings()
        self.system: dict[str, str] = {}
        self.profiles: dict[tuple[str, str], _ProfileDraft] = {}
        self.deployments: dict[tuple[str, str], _DeploymentDraft] = {}
        self.mailboxes: dict[str, _MailboxDraft] = {}
        self.providers = 0

    # records -------------------------------------------------------------------------------------
    def record(self, node: _Node, ancestors: list[_Node]) -> None:
        if node.key in PROVIDER_RECORDS:
            self._provider(node, ancestors)
        elif node.key in PROFILE_RECORDS:
            self._profile(node)
        else:
            self._listed_mailbox(node, ancestors)

    def _deployment_context(self, ancestors: list[_Node]) -> tuple[str, str]:
        for ancestor in reversed(ancestors):
            if ancestor.key in DEPLOYMENTS:
                values: dict[str, str] = {}
                for child in ancestor.children:
                    if child.is_leaf and child.text:
                        canonical = "deployment" if child.key == "name" else _CANONICAL.get(child.key)
                        if canonical:
                            values.setdefault(canonical, child.text)
                for name, value in ancestor.attrib.items():
                    canonical = "deployment" if _key(name) == "name" else _CANONICAL.get(_key(name))
                    if canonical:
                        values.setdefault(canonical, value.strip())
                return values.get("deployment", ""), values.get("deployment_url", "")
        return "", ""

    def _note_deployment(self, name: str, url: str, address: str | None) -> str:
        if not (name or url):
            return ""
        draft = self.deployments.setdefault((name, url), _DeploymentDraft(name=name, url=url))
        if address:
            draft.addresses.add(address.lower())
        return name or url

    def _provider(self, node: _Node, ancestors: list[_Node]) -> None:
        self.providers += 1
        fields = _read_fields(node, self.warnings)
        values = fields.values
        provider_class = values.get("provider_class", "")
        direction = _direction(values.get("direction", ""), provider_class)
        if not direction:
            self.warnings.note(
                f"A <{node.name}> on line {node.line:,} does not say whether it is incoming or outgoing; "
                "its profile is listed without a direction."
            )
        server = values.get("server", "")
        protocol = _protocol(values.get("protocol", ""), provider_class, server)
        authentication = values.get("authentication", "") or values.get("access_credentials", "")
        context_name, context_url = self._deployment_context(ancestors)
        deployment_name = values.get("deployment", "") or context_name
        deployment_url = values.get("deployment_url", "") or context_url
        profile_name = (
            values.get("profile")
            or values.get(f"{direction}_profile" if direction else "profile")
            or _profile_name_for(direction, protocol, server)
        )
        settings = {name: values[name] for name in _PROFILE_SETTING_FIELDS if values.get(name)}
        settings.update(fields.overrides)
        profile = self._profile_draft(profile_name, direction)
        profile.protocol = profile.protocol or protocol
        profile.authentication = profile.authentication or authentication
        if server:
            profile.server = profile.server or server
            profile.servers.setdefault(server, None)
        for name, value in settings.items():
            profile.settings.setdefault(name, value)

        raw_address = values.get("address", "")
        address = _address(raw_address) if raw_address else None
        deployment = self._note_deployment(deployment_name, deployment_url, address)
        if address is None:
            if raw_address:
                self.warnings.note(
                    f"The <{node.name}> on line {node.line:,} serves {raw_address[:100]!r}, which is not an email "
                    "address; it counts towards its profile but is not listed as a served mailbox."
                )
            return
        profile.mailboxes += 1
        mailbox = self._mailbox_draft(address)
        self._fill_mailbox(mailbox, values, node, default_type="")
        if direction:
            mailbox.directions.setdefault(direction, None)
        mailbox.profiles.setdefault(profile_name, None)
        mailbox.deployment = mailbox.deployment or deployment
        if len(mailbox.providers) < MAX_RAW_PROVIDERS:
            mailbox.providers.append(fields.raw)

    def _profile(self, node: _Node) -> None:
        fields = _read_fields(node, self.warnings)
        values = fields.values
        name = values.get("name") or values.get("profile") or f"Profile on line {node.line}"
        direction = PROFILE_RECORDS[node.key] or _direction(
            values.get("direction") or values.get("type", ""), values.get("provider_class", "")
        )
        server = values.get("server", "")
        draft = self._profile_draft(name, direction)
        protocol = _protocol(values.get("protocol", ""), values.get("provider_class", ""), server)
        draft.protocol = protocol or draft.protocol
        draft.server = server or draft.server
        if server:
            draft.servers.setdefault(server, None)
        draft.authentication = values.get("authentication") or values.get("access_credentials") or draft.authentication
        skip = {"name", "profile", "direction", "type", "protocol", "server", "authentication"}
        draft.settings.update({key: value for key, value in values.items() if key not in skip})
        draft.settings.update(fields.overrides)

    def _listed_mailbox(self, node: _Node, ancestors: list[_Node]) -> None:
        fields = _read_fields(node, self.warnings, extra={"name": "object_name"})
        values = fields.values
        raw_address = values.get("address", "")
        address = _address(raw_address) if raw_address else None
        if address is None:
            self.warnings.note(
                f"The <{node.name}> on line {node.line:,} has "
                + (f"{raw_address[:100]!r}, which is not an email address" if raw_address else "no email address")
                + "; it was not listed."
            )
            return
        context_name, context_url = self._deployment_context(ancestors)
        deployment = self._note_deployment(
            values.get("deployment", "") or context_name, values.get("deployment_url", "") or context_url, address
        )
        mailbox = self._mailbox_draft(address)
        self._fill_mailbox(mailbox, values, node, default_type=MAILBOX_RECORDS[node.key])
        single_direction = _direction(values.get("direction", ""))
        for direction in (INCOMING, OUTGOING):
            profile_name = values.get(f"{direction}_profile") or (
                values.get("profile") if single_direction == direction else None
            )
            if profile_name:
                mailbox.directions.setdefault(direction, None)
                mailbox.profiles.setdefault(profile_name, None)
                self._profile_draft(profile_name, direction).mailboxes += 1
        if single_direction:
            mailbox.directions.setdefault(single_direction, None)
        mailbox.deployment = mailbox.deployment or deployment
        if len(mailbox.providers) < MAX_RAW_PROVIDERS:
            mailbox.providers.append(fields.raw)

    def _profile_draft(self, name: str, direction: str) -> _ProfileDraft:
        return self.profiles.setdefault((name, direction), _ProfileDraft(name=name, direction=direction))

    def _mailbox_draft(self, address: str) -> _MailboxDraft:
        return self.mailboxes.setdefault(address.lower(), _MailboxDraft(address=address))

    def _fill_mailbox(self, mailbox: _MailboxDraft, values: dict[str, str], node: _Node, *, default_type: str) -> None:
        written_type = values.get("object_type", "")
        object_type = _OBJECT_TYPES.get(_key(written_type), "") if written_type else default_type
        if written_type and not object_type:
            self.warnings.note(
                f"The <{node.name}> on line {node.line:,} says its mailbox belongs to a {written_type[:50]!r}, "
                "which is not a user, queue or forward mailbox."
            )
        if object_type:
            if mailbox.object_type and mailbox.object_type != object_type:
                self.warnings.note(
                    f"{mailbox.address} is listed both as a {mailbox.object_type} and as a {object_type}; "
                    f"the first is kept."
                )
            mailbox.object_type = mailbox.object_type or object_type
        mailbox.name = mailbox.name or values.get("object_name", "")
        written_id = values.get("mailbox_id", "")
        if written_id:
            parsed = _mailbox_id(written_id)
            if parsed is None:
                self.warnings.note(
                    f"The mailbox id {written_id[:60]!r} on line {node.line:,} is not a GUID; "
                    f"{mailbox.address} is matched by its address only."
                )
            elif mailbox.mailbox_id and mailbox.mailbox_id != parsed:
                self.warnings.note(f"{mailbox.address} has two different mailbox ids; the first is kept.")
            else:
                mailbox.mailbox_id = parsed

    # the rest of the tree ------------------------------------------------------------------------
    def tree(self, root: _Node) -> None:
        for name in root.attrib:
            self.warnings.unknown(f"@{name}", root.name, root.line, kept=False)
        self._walk(root)

    def _walk(self, node: _Node) -> None:
        for child in node.children:
            if child.key in SYSTEM_BLOCKS:
                self._system(child)
            elif child.key in CONTAINERS:
                self._walk(child)
            elif child.key in DEPLOYMENTS:
                self._deployment(child)
            else:
                self.warnings.unknown(child.name, node.name, child.line, kept=False)

    def _system(self, node: _Node) -> None:
        for path, key, value, in_overrides, line in _leaves(node):
            self.system.setdefault(path, REMOVED if _is_secret(key) and value else value[:MAX_RAW_VALUE])
            if not in_overrides and key not in SYSTEM_SETTINGS:
                self.warnings.unknown(path.rsplit(".", 1)[-1], node.name, line)

    def _deployment(self, node: _Node) -> None:
        values: dict[str, str] = {}
        settings: dict[str, str] = {}
        for name, value in node.attrib.items():
            values.setdefault("deployment" if _key(name) == "name" else _CANONICAL.get(_key(name), name), value)
        for child in node.children:
            if child.is_leaf:
                canonical = "deployment" if child.key == "name" else _CANONICAL.get(child.key)
                if canonical in ("deployment", "deployment_url"):
                    values.setdefault(canonical, child.text)
                elif _is_secret(child.key):
                    continue
                elif canonical is not None:
                    settings.setdefault(child.name, child.text[:MAX_RAW_VALUE])
                else:
                    settings.setdefault(child.name, child.text[:MAX_RAW_VALUE])
                    self.warnings.unknown(child.name, node.name, child.line)
            elif child.key in CONTAINERS:
                self._walk(child)
            else:
                self.warnings.unknown(child.name, node.name, child.line, kept=False)
        name, url = values.get("deployment", ""), values.get("deployment_url", "")
        if name or url:
            self.deployments.setdefault((name, url), _DeploymentDraft(name=name, url=url)).settings.update(settings)

    # result --------------------------------------------------------------------------------------
    def result(self, state: dict[str, dict[str, str]] | None) -> ParsedConfiguration:
        for profile in self.profiles.values():
            if len(profile.servers) > 1:
                others = ", ".join(list(profile.servers)[1:4])
                self.warnings.note(
                    f"The profile {profile.name!r} uses more than one email server ({others} as well as "
                    f"{profile.server}); the first is shown."
                )
        if state is not None:
            listed = set(self.mailboxes)
            extra = [address for address in state if address not in listed]
            if not state:
                self.warnings.note("The SystemState file lists no mailboxes the portal recognises; it was not used.")
            elif extra:
                examples = ", ".join(sorted(extra)[:3])
                self.warnings.note(
                    f"The SystemState file has entries for {len(extra):,} addresses the configuration does not "
                    f"list (for example {examples}); they were not imported."
                )
        profiles = tuple(
            RouterProfile(
                name=draft.name,
                direction=draft.direction,
                protocol=draft.protocol,
                server=draft.server,
                authentication=draft.authentication,
                settings={**draft.settings, "mailboxes": draft.mailboxes},
            )
            for draft in self.profiles.values()
        )
        deployments = tuple(
            RouterDeployment(name=draft.name, url=draft.url, settings=draft.settings, mailboxes=len(draft.addresses))
            for draft in self.deployments.values()
        )
        mailboxes = []
        for lowered, draft in self.mailboxes.items():
            raw: dict[str, Any] = {"providers": draft.providers}
            entry = (state or {}).get(lowered)
            if entry:
                raw["state"] = entry
            directions = tuple(d for d in (INCOMING, OUTGOING) if d in draft.directions)
            mailboxes.append(
                ServedMailbox(
                    address=draft.address,
                    object_type=draft.object_type,
                    name=draft.name,
                    directions=directions,
                    profiles=tuple(draft.profiles),
                    mailbox_id=draft.mailbox_id,
                    deployment=draft.deployment,
                    raw=raw,
                )
            )
        return ParsedConfiguration(
            system=self.system,
            profiles=profiles,
            deployments=deployments,
            mailboxes=tuple(mailboxes),
            warnings=self.warnings.render(),
            state_entries=len(state or {}),
        )


# --- the SystemState file ---------------------------------------------------------------------


def _state_root(node: _Node) -> None:
    if node.key == ROOT:
        raise _fail(STATE_FILE, "configuration_as_state")


def _parse_state(data: bytes) -> dict[str, dict[str, str]]:
    """Per-mailbox entries of the SystemState file, by lower-case address; its layout varies, so any
    element with an address among its values is an entry."""
    target = _BoundedTarget(label=STATE_FILE, check_root=_state_root)
    root = _parse(data, label=STATE_FILE, target=target)
    entries: dict[str, dict[str, str]] = {}
    pending = [root]
    while pending:
        node = pending.pop()
        values: dict[str, str] = {}
        address = None
        for name, value in node.attrib.items():
            values[name] = REMOVED if _is_secret(_key(name)) else value[:MAX_RAW_VALUE]
            if address is None and _CANONICAL.get(_key(name)) == "address":
                address = _address(value)
        for child in node.children:
            if child.is_leaf:
                values.setdefault(child.name, REMOVED if _is_secret(child.key) else child.text[:MAX_RAW_VALUE])
                if address is None and _CANONICAL.get(child.key) == "address":
                    address = _address(child.text)
            else:
                pending.append(child)
        if address is not None:
            entries.setdefault(address.lower(), dict(list(values.items())[:30]))
    return entries


# --- the entry point --------------------------------------------------------------------------


def _configuration_root(node: _Node) -> None:
    if node.key == ROOT:
        return
    if "systemstate" in node.key:
        raise _fail(CONFIGURATION_FILE, "state_as_configuration")
    raise RouterFileError(
        "wrong_root",
        f"{CONFIGURATION_FILE} is XML but not an Email Router configuration: its top element is "
        f"<{node.name[:60]}>, not <Configuration>. Upload Microsoft.Crm.Tools.EmailAgent.xml",
    )


def parse_router_configuration(data: bytes, *, state: bytes | None = None) -> ParsedConfiguration:
    """Read an Email Router configuration (and optionally its SystemState file).

    Raises :class:`RouterFileError` with a message for the person who uploaded
    the file when either cannot be imported. Never reads anything but ``data``
    and ``state``.
    """
    reader = _Reader()
    target = _BoundedTarget(label=CONFIGURATION_FILE, check_root=_configuration_root, on_record=reader.record)
    root = _parse(data, label=CONFIGURATION_FILE, target=target)
    reader.tree(root)
    if not reader.providers and not reader.mailboxes and not reader.profiles:
        raise _fail(CONFIGURATION_FILE, "no_providers")
    state_entries = _parse_state(state) if state is not None else None
    return reader.result(state_entries)
