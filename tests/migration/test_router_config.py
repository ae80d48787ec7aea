"""The Email Router configuration parser: what it reads, what it refuses, and that nothing in a file
can make it read anything else."""

from __future__ import annotations

import builtins
import importlib.util
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from migration.router_config import (
    INCOMING,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    OUTGOING,
    REMOVED,
    RouterFileError,
    parse_router_configuration,
    sniff,
)
from tests.migration.router_corpus import demo_router_file

CORPUS = Path(__file__).resolve().parent / "router_corpus"

# Every file of the corpus, the code it is refused with, and words its message must contain.
REFUSED = {
    "billion_laughs.xml": ("entity", "declares XML entities"),
    "quadratic_blowup.xml": ("entity", "declares XML entities"),
    "external_entity_file.xml": ("entity", "declares XML entities"),
    "external_entity_http.xml": ("entity", "declares XML entities"),
    "parameter_entity_http.xml": ("entity", "declares XML entities"),
    "external_dtd.xml": ("dtd", "document type declaration"),
    "doctype_only.xml": ("dtd", "document type declaration"),
    "undefined_entity.xml": ("undefined_entity", "uses an entity that is not defined"),
    "binary.bin": ("binary", "is not a text file"),
    "archive.zip": ("archive", "compressed archive"),
    "pdf.xml": ("binary", "is not a text file"),
    "not_xml.txt": ("not_xml", "is not XML"),
    "json.xml": ("not_xml", "is not XML"),
    "empty.xml": ("empty", "is empty"),
    "whitespace.xml": ("empty", "is empty"),
    "wrong_root.xml": ("wrong_root", "its top element is <html>, not <Configuration>"),
    "system_state_as_configuration.xml": ("state_as_configuration", "is the Email Router's SystemState file"),
    "truncated.xml": ("truncated", "ends before its XML is complete"),
    "truncated_in_tag.xml": ("truncated", "ends before its XML is complete"),
    "malformed.xml": ("malformed", "is not well-formed XML: mismatched tag on line 1"),
    "utf16_without_bom.xml": ("utf16_no_bom", "UTF-16 text without a byte order mark"),
    "utf32.xml": ("bad_encoding", "UTF-32"),
    "latin1_undeclared.xml": ("undeclared_encoding", "does not say what encoding it uses and is not UTF-8"),
    "latin1_declared_utf8.xml": ("wrong_encoding", "says its encoding is utf-8 but contains bytes that are not"),
    "unsupported_encoding.xml": ("bad_encoding", "says its encoding is ebcdic-cp-us, which the portal does not read"),
    "deeply_nested.xml": ("too_deep", f"more than {MAX_DEPTH} levels deep"),
    "no_providers.xml": ("no_providers", "has no <ProviderConfiguration> entries"),
}
READABLE = {"utf16_with_bom.xml", "xinclude_file.xml"}
MINIMAL = (
    b"<Configuration><ProviderConfiguration><Direction>Inbound</Direction><Target>a@example.gov.uk</Target>"
    b"</ProviderConfiguration></Configuration>"
)


def _corpus_generator():
    spec = importlib.util.spec_from_file_location("router_corpus_generate", CORPUS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory) -> bytes:
    return demo_router_file(tmp_path_factory.mktemp("demo-router"))


# --- the files Email Routers write --------------------------------------------------------------


def test_demo_router_file_gives_its_profiles_deployment_and_mailboxes(demo_file):
    parsed = parse_router_configuration(demo_file)

    assert parsed.system["MaxThreads"] == "50"
    assert parsed.system["ConfigUpdatePeriod"] == "300000"
    assert parsed.system["LogLevel"] == "1"
    profiles = {profile.name: profile for profile in parsed.profiles}
    assert set(profiles) == {"Legacy Exchange incoming", "Legacy Exchange outgoing"}
    incoming = profiles["Legacy Exchange incoming"]
    assert incoming.direction == INCOMING
    assert incoming.protocol == "Exchange Web Services"
    assert incoming.server == "https://mail.example.gov.uk/EWS/Exchange.asmx"
    assert incoming.authentication == "WindowsIntegrated"
    outgoing = profiles["Legacy Exchange outgoing"]
    assert (outgoing.direction, outgoing.protocol, outgoing.server) == (OUTGOING, "SMTP", "smtp.example.gov.uk")
    assert [(d.name, d.url) for d in parsed.deployments] == [("Example", "https://example.crm11.dynamics.com")]
    assert parsed.deployments[0].mailboxes == len(parsed.mailboxes)

    assert len(parsed.mailboxes) > 100
    assert {m.object_type for m in parsed.mailboxes} == {"user", "queue", "forward"}
    assert all(m.mailbox_id is not None for m in parsed.mailboxes)
    complaints = next(m for m in parsed.mailboxes if m.address == "complaints@example.gov.uk")
    assert complaints.object_type == "queue"
    assert complaints.name == "Complaints"
    assert complaints.directions == (INCOMING, OUTGOING)
    assert complaints.profiles == ("Legacy Exchange incoming", "Legacy Exchange outgoing")
    assert complaints.deployment == "Example"
    assert complaints.raw["providers"][0]["Target"] == "complaints@example.gov.uk"
    forward = next(m for m in parsed.mailboxes if m.object_type == "forward")
    assert forward.directions == (INCOMING,)
    assert parsed.warnings == ()


def test_profiles_deployments_and_their_users_queues_and_forward_mailboxes_as_separate_elements():
    data = b"""<?xml version="1.0" encoding="utf-8"?>
<Configuration xmlns="urn:example:router">
  <SystemConfiguration><MaxThreads>10</MaxThreads><ProviderOverrides><CacheCapacity>512</CacheCapacity>
  </ProviderOverrides></SystemConfiguration>
  <Profiles>
    <IncomingProfile><Name>POP3 in</Name><EmailServerType>POP3</EmailServerType>
      <EmailServer>pop.example.gov.uk</EmailServer><EmailAuthMode>Clear</EmailAuthMode>
      <EmailPassword>hunter2</EmailPassword><EmailPort>995</EmailPort></IncomingProfile>
    <OutgoingProfile Name="SMTP out"><EmailServerType>SMTP</EmailServerType>
      <EmailServer>smtp.example.gov.uk</EmailServer><EmailAuthMode>Anonymous</EmailAuthMode></OutgoingProfile>
  </Profiles>
  <Deployments>
    <Deployment>
      <Name>Contoso</Name><CrmServerUrl>https://contoso.crm11.dynamics.com</CrmServerUrl>
      <Users>
        <User><EmailAddress>Ann.Smith@Example.gov.uk</EmailAddress><FullName>Ann Smith</FullName>
          <IncomingProfile>POP3 in</IncomingProfile><OutgoingProfile>SMTP out</OutgoingProfile>
          <MailboxId>{6F9619FF-8B86-D011-B42D-00C04FC964FF}</MailboxId></User>
      </Users>
      <Queues><Queue EmailAddress="support@example.gov.uk"><Name>Support</Name>
        <IncomingProfile>POP3 in</IncomingProfile></Queue></Queues>
      <ForwardMailboxes><ForwardMailbox><EmailAddress>crm-forward@example.gov.uk</EmailAddress>
        <IncomingProfile>POP3 in</IncomingProfile></ForwardMailbox></ForwardMailboxes>
    </Deployment>
  </Deployments>
</Configuration>
"""
    parsed = parse_router_configuration(data)

    assert parsed.system == {"MaxThreads": "10", "ProviderOverrides.CacheCapacity": "512"}
    profiles = {profile.name: profile for profile in parsed.profiles}
    assert profiles["POP3 in"].direction == INCOMING
    assert profiles["POP3 in"].protocol == "POP3"
    assert profiles["POP3 in"].server == "pop.example.gov.uk"
    assert profiles["POP3 in"].settings["port"] == "995"
    assert profiles["POP3 in"].settings["mailboxes"] == 3
    assert "hunter2" not in repr(parsed)
    assert profiles["SMTP out"].direction == OUTGOING
    assert profiles["SMTP out"].authentication == "Anonymous"
    mailboxes = {m.address: m for m in parsed.mailboxes}
    ann = mailboxes["Ann.Smith@Example.gov.uk"]
    assert (ann.object_type, ann.name, ann.deployment) == ("user", "Ann Smith", "Contoso")
    assert ann.directions == (INCOMING, OUTGOING)
    assert ann.profiles == ("POP3 in", "SMTP out")
    assert ann.mailbox_id == uuid.UUID("6f9619ff-8b86-d011-b42d-00c04fc964ff")
    assert mailboxes["support@example.gov.uk"].object_type == "queue"
    assert mailboxes["support@example.gov.uk"].name == "Support"
    assert mailboxes["crm-forward@example.gov.uk"].object_type == "forward"
    assert [(d.name, d.url, d.mailboxes) for d in parsed.deployments] == [
        ("Contoso", "https://contoso.crm11.dynamics.com", 3)
    ]
    assert parsed.warnings == ()


def test_unknown_elements_are_listed_as_warnings_and_their_values_kept():
    data = b"""<Configuration>
  <SystemConfiguration><MaxThreads>5</MaxThreads><TelemetryLevel>2</TelemetryLevel></SystemConfiguration>
  <Licensing><Key>ABC</Key></Licensing>
  <ProviderConfiguration>
    <ProviderClass>Microsoft.Crm.Tools.Email.Providers.PopPollingMailboxProvider</ProviderClass>
    <EmailServer>pop.example.gov.uk</EmailServer><Target>a@example.gov.uk</Target>
    <PollingJitter>30</PollingJitter>
  </ProviderConfiguration>
  <ProviderConfiguration>
    <ProviderClass>Microsoft.Crm.Tools.Email.Providers.PopPollingMailboxProvider</ProviderClass>
    <EmailServer>pop.example.gov.uk</EmailServer><Target>b@example.gov.uk</Target>
    <PollingJitter>45</PollingJitter><CrmPassword>secret</CrmPassword>
  </ProviderConfiguration>
</Configuration>"""
    parsed = parse_router_configuration(data)

    assert len(parsed.mailboxes) == 2
    # No <Direction>: the provider class says it is incoming; no profile name: one is made up.
    assert [(p.name, p.direction, p.protocol) for p in parsed.profiles] == [
        ("Incoming POP3 on pop.example.gov.uk", INCOMING, "POP3")
    ]
    assert parsed.system["TelemetryLevel"] == "2"
    assert parsed.mailboxes[1].raw["providers"][0]["PollingJitter"] == "45"
    assert parsed.mailboxes[1].raw["providers"][0]["CrmPassword"] == REMOVED
    warnings = "\n".join(parsed.warnings)
    assert "Unknown element <TelemetryLevel> inside <SystemConfiguration> (line 2)" in warnings
    assert "Unknown element <Licensing> inside <Configuration> (line 3): it was skipped" in warnings
    assert (
        "Unknown element <PollingJitter> inside <ProviderConfiguration> (line 7, and 1 more times): "
        "its value is kept with the raw fields"
    ) in warnings


def test_the_system_state_file_adds_each_mailboxs_state_and_warns_about_strangers():
    config = b"""<Configuration><ProviderConfiguration><Direction>Inbound</Direction>
<Target>a@example.gov.uk</Target></ProviderConfiguration></Configuration>"""
    state = b"""<?xml version="1.0"?><SystemState>
<ProviderState><Target>A@example.gov.uk</Target><LastRun>2020-05-01T10:00:00</LastRun></ProviderState>
<ProviderState><Target>gone@example.gov.uk</Target><LastRun>2019-01-01T10:00:00</LastRun></ProviderState>
</SystemState>"""
    parsed = parse_router_configuration(config, state=state)

    assert parsed.state_entries == 2
    assert parsed.mailboxes[0].raw["state"]["LastRun"] == "2020-05-01T10:00:00"
    assert any(
        "1 addresses the configuration does not list (for example gone@example.gov.uk)" in w for w in parsed.warnings
    )


def test_a_broken_system_state_file_is_refused_with_its_own_name():
    config = MINIMAL
    with pytest.raises(RouterFileError) as refused:
        parse_router_configuration(config, state=(CORPUS / "billion_laughs.xml").read_bytes())
    assert refused.value.code == "entity"
    assert refused.value.message.startswith("The SystemState file declares XML entities")
    with pytest.raises(RouterFileError) as swapped:
        parse_router_configuration(config, state=config)
    assert swapped.value.code == "configuration_as_state"


def test_latin1_and_windows_1252_files_that_say_so_are_read():
    text = (
        '<?xml version="1.0" encoding="windows-1252"?><Configuration><ProviderConfiguration>'
        "<Direction>Inbound</Direction><Target>caf\u00e9@example.gov.uk</Target>"
        "<CrmObjectName>Caf\u00e9 \u20ac</CrmObjectName></ProviderConfiguration></Configuration>"
    )
    parsed = parse_router_configuration(text.encode("cp1252"))
    assert parsed.mailboxes[0].name == "Caf\u00e9 \u20ac"


# --- the corpus of hostile and broken files -----------------------------------------------------


def test_the_corpus_on_disk_is_what_its_script_writes():
    generator = _corpus_generator()
    for name, content in generator.CASES.items():
        assert (CORPUS / name).read_bytes() == content, name
    assert set(generator.CASES) == set(REFUSED) | READABLE


@pytest.mark.parametrize(("name", "expected"), sorted(REFUSED.items()))
def test_each_hostile_or_broken_file_is_refused_with_a_clear_message(name, expected):
    code, words = expected
    with pytest.raises(RouterFileError) as refused:
        parse_router_configuration((CORPUS / name).read_bytes())
    assert refused.value.code == code
    assert refused.value.message.startswith("The configuration file ")
    assert words in refused.value.message


def test_utf16_with_a_byte_order_mark_is_read():
    parsed = parse_router_configuration((CORPUS / "utf16_with_bom.xml").read_bytes())
    assert [m.address for m in parsed.mailboxes] == ["complaints@example.gov.uk"]


def test_xinclude_is_not_followed():
    parsed = parse_router_configuration((CORPUS / "xinclude_file.xml").read_bytes())
    assert [m.address for m in parsed.mailboxes] == ["complaints@example.gov.uk"]
    assert "root:" not in repr(parsed)
    assert any("Unknown element <include>" in warning for warning in parsed.warnings)


def test_a_file_over_32mb_is_refused_before_it_is_parsed(monkeypatch):
    huge = b"<Configuration>" + b" " * MAX_FILE_BYTES + b"</Configuration>"
    monkeypatch.setattr("migration.router_config.DefusedXMLParser", _explode)
    with pytest.raises(RouterFileError) as refused:
        parse_router_configuration(huge)
    assert refused.value.code == "too_big"
    assert refused.value.message == "The configuration file must be smaller than 32MB"


def _explode(*args, **kwargs):
    raise AssertionError("the parser must not be built for this file")


def test_a_file_of_millions_of_elements_is_stopped_early():
    many = b"<Configuration>" + b"<x/>" * 3_000_000 + b"</Configuration>"
    assert len(many) < MAX_FILE_BYTES
    started = time.monotonic()
    with pytest.raises(RouterFileError) as refused:
        parse_router_configuration(many)
    assert refused.value.code == "too_many_elements"
    assert time.monotonic() - started < 30


def test_sniffing_refuses_wrong_files_without_an_xml_parser(monkeypatch):
    monkeypatch.setattr("migration.router_config.DefusedXMLParser", _explode)
    for name in ("binary.bin", "archive.zip", "not_xml.txt", "utf16_without_bom.xml", "latin1_undeclared.xml"):
        with pytest.raises(RouterFileError) as refused:
            sniff((CORPUS / name).read_bytes(), label="The selected file")
        assert refused.value.message.startswith("The selected file ")
    assert sniff((CORPUS / "utf16_with_bom.xml").read_bytes()).encoding == "utf-16"


# --- nothing in a file makes the portal read a file or open a connection ------------------------


@pytest.fixture
def listener():
    """A TCP socket listening on 127.0.0.1 that records every connection made to it."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    connections: list[tuple[str, int]] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, address = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connections.append(address)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], connections
    stop.set()
    thread.join(timeout=2)
    server.close()


@pytest.fixture
def no_python_io(monkeypatch):
    """Fail the test if the parser opens a file or a connection through Python while it runs."""
    attempts: list[str] = []
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        attempts.append(f"open {file}")
        return real_open(file, *args, **kwargs)

    def guarded_connect(self, address):
        attempts.append(f"connect {address}")
        raise OSError("connections are not allowed while parsing")

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: guarded_connect(None, a))
    return attempts


def _leaky_file(tmp_path: Path) -> Path:
    # If the entity were expanded, this would become a served mailbox's address.
    leak = tmp_path / "leak.txt"
    leak.write_text("leaked@example.gov.uk")
    return leak


def test_external_entities_pointing_at_a_local_file_are_never_read(tmp_path, no_python_io):
    generator = _corpus_generator()
    leak = _leaky_file(tmp_path)
    for content in (
        generator.external_entity(leak.as_uri()),
        generator.external_entity(str(leak)),
        generator.parameter_entity(leak.as_uri()),
        generator.external_dtd(leak.as_uri()),
    ):
        with pytest.raises(RouterFileError) as refused:
            parse_router_configuration(content)
        assert refused.value.code in ("entity", "dtd")
        assert "leaked" not in refused.value.message
    parsed = parse_router_configuration(generator.xinclude(leak.as_uri()))
    assert "leaked" not in repr(parsed)
    assert no_python_io == []


def test_external_entities_pointing_at_a_url_never_connect(listener, no_python_io):
    port, connections = listener
    generator = _corpus_generator()
    url = f"http://127.0.0.1:{port}/leak"
    for content in (
        generator.external_entity(url),
        generator.parameter_entity(url),
        generator.external_dtd(url),
    ):
        with pytest.raises(RouterFileError):
            parse_router_configuration(content)
        with pytest.raises(RouterFileError):
            parse_router_configuration(MINIMAL, state=content)
    parse_router_configuration(generator.xinclude(url))
    time.sleep(0.5)  # give a connection, had one been made, time to be accepted
    assert connections == []
    assert no_python_io == []


def test_the_listener_would_have_seen_a_connection(listener):
    port, connections = listener
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    deadline = time.monotonic() + 2
    while not connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(connections) == 1
