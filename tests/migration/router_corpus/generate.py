"""Write the corpus of hostile and broken Email Router files beside this script.

Each file is small and committed; run ``python tests/migration/router_corpus/generate.py`` to
write them again (the output is the same every time). Cases that need a path or a port only
known while a test runs (an external entity aimed at a file the test made, or at a socket it
listens on) and the file over the size limit are built by the tests themselves.
"""

from __future__ import annotations

import codecs
import io
import random
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

PROVIDER = (
    "<ProviderConfiguration>"
    "<ProviderClass>Microsoft.Crm.Tools.Email.Providers.ExchangePollingMailboxProvider</ProviderClass>"
    "<Direction>Inbound</Direction>"
    "<EmailServer>https://mail.example.gov.uk/EWS/Exchange.asmx</EmailServer>"
    "<Target>{address}</Target>"
    "</ProviderConfiguration>"
)
VALID = (
    '<?xml version="1.0" encoding="utf-8"?>\n<Configuration>\n'
    "<SystemConfiguration><MaxThreads>50</MaxThreads></SystemConfiguration>\n"
    + PROVIDER.format(address="complaints@example.gov.uk")
    + "\n</Configuration>\n"
)


def billion_laughs() -> bytes:
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{n} "{("&lol" + str(n - 1) + ";") * 10}">' for n in range(1, 10)
    ]
    return (
        '<?xml version="1.0"?>\n<!DOCTYPE Configuration [\n'
        + "\n".join(entities)
        + "\n]>\n<Configuration><ProviderConfiguration><Target>&lol9;</Target>"
        + "</ProviderConfiguration></Configuration>\n"
    ).encode()


def quadratic_blowup() -> bytes:
    big = "A" * 50_000
    return (
        f'<?xml version="1.0"?>\n<!DOCTYPE Configuration [<!ENTITY a "{big}">]>\n<Configuration>'
        + "&a;" * 1000
        + "</Configuration>\n"
    ).encode()


def external_entity(system_id: str) -> bytes:
    return (
        '<?xml version="1.0"?>\n'
        f'<!DOCTYPE Configuration [<!ENTITY leak SYSTEM "{system_id}">]>\n'
        "<Configuration><ProviderConfiguration><Direction>Inbound</Direction>"
        "<Target>&leak;</Target></ProviderConfiguration></Configuration>\n"
    ).encode()


def parameter_entity(system_id: str) -> bytes:
    return (
        '<?xml version="1.0"?>\n'
        f'<!DOCTYPE Configuration [<!ENTITY % remote SYSTEM "{system_id}"> %remote;]>\n'
        "<Configuration/>\n"
    ).encode()


def external_dtd(system_id: str) -> bytes:
    return (
        f'<?xml version="1.0"?>\n<!DOCTYPE Configuration SYSTEM "{system_id}">\n'
        "<Configuration><ProviderConfiguration><Target>a@example.gov.uk</Target></ProviderConfiguration>"
        "</Configuration>\n"
    ).encode()


def xinclude(target: str) -> bytes:
    return (
        '<?xml version="1.0"?>\n<Configuration xmlns:xi="http://www.w3.org/2001/XInclude">\n'
        f'<xi:include href="{target}" parse="text"/>\n'
        + PROVIDER.format(address="complaints@example.gov.uk")
        + "\n</Configuration>\n"
    ).encode()


def deeply_nested() -> bytes:
    return ("<Configuration>" + "<Nested>" * 200 + "</Nested>" * 200 + "</Configuration>").encode()


def binary() -> bytes:
    rng = random.Random(5)  # reproducible noise
    return bytes(rng.getrandbits(8) for _ in range(4096))


def archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        info = zipfile.ZipInfo("Microsoft.Crm.Tools.EmailAgent.xml", date_time=(2020, 1, 1, 0, 0, 0))
        zipped.writestr(info, VALID)
    return buffer.getvalue()


CASES: dict[str, bytes] = {
    "billion_laughs.xml": billion_laughs(),
    "quadratic_blowup.xml": quadratic_blowup(),
    "external_entity_file.xml": external_entity("file:///etc/passwd"),
    "external_entity_http.xml": external_entity("http://127.0.0.1:9/leak"),
    "parameter_entity_http.xml": parameter_entity("http://127.0.0.1:9/remote.dtd"),
    "external_dtd.xml": external_dtd("http://127.0.0.1:9/configuration.dtd"),
    "doctype_only.xml": b'<?xml version="1.0"?>\n<!DOCTYPE Configuration>\n<Configuration/>\n',
    "undefined_entity.xml": b"<Configuration><ProviderConfiguration><Target>&leak;</Target>"
    b"</ProviderConfiguration></Configuration>\n",
    "xinclude_file.xml": xinclude("file:///etc/passwd"),
    "binary.bin": binary(),
    "archive.zip": archive(),
    "pdf.xml": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
    "not_xml.txt": b"MaxThreads=50\nSchedulingPeriod=1000\n",
    "json.xml": b'{"Configuration": {"MaxThreads": 50}}\n',
    "empty.xml": b"",
    "whitespace.xml": b"\xef\xbb\xbf  \r\n\t\r\n",
    "wrong_root.xml": b'<?xml version="1.0"?>\n<html><body><p>Not a router file</p></body></html>\n',
    "system_state_as_configuration.xml": b'<?xml version="1.0"?>\n<SystemState><Provider/></SystemState>\n',
    "truncated.xml": VALID.encode()[: len(VALID) // 2],
    "truncated_in_tag.xml": VALID.encode()[: VALID.index("<Target>") + 4],
    "malformed.xml": b"<Configuration><ProviderConfiguration></Provider></Configuration>\n",
    "utf16_without_bom.xml": VALID.replace("utf-8", "utf-16").encode("utf-16-le"),
    "utf16_with_bom.xml": codecs.BOM_UTF16_LE + VALID.replace("utf-8", "utf-16").encode("utf-16-le"),
    "utf32.xml": codecs.BOM_UTF32_LE + VALID.encode("utf-32-le"),
    "latin1_undeclared.xml": VALID.replace('<?xml version="1.0" encoding="utf-8"?>\n', "")
    .replace("complaints@", "r\u00e9clamations@")
    .encode("latin-1"),
    "latin1_declared_utf8.xml": VALID.replace("complaints@", "r\u00e9clamations@").encode("latin-1"),
    "unsupported_encoding.xml": VALID.replace("utf-8", "ebcdic-cp-us").encode(),
    "deeply_nested.xml": deeply_nested(),
    "no_providers.xml": b'<?xml version="1.0"?>\n<Configuration><SystemConfiguration><MaxThreads>50'
    b"</MaxThreads></SystemConfiguration></Configuration>\n",
}


def main() -> None:
    for name, content in CASES.items():
        (HERE / name).write_bytes(content)


if __name__ == "__main__":
    main()
