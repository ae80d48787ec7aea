"""The simulator's HTTPS server: parse, authenticate, limit, misbehave on demand, dispatch, record.

One :class:`SimulatorApp` owns the state and answers requests through
:meth:`SimulatorApp.dispatch`, which is pure request-in/response-out apart
from the two faults that need the socket (a held connection and a lost
response). :class:`SimulatorServer` puts it on a threaded HTTPS listener.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from . import exchange, graph
from .core import Scheduler, SimRequest, SimResponse, Simulator, Store
from .entra import Entra, Tenant, TokenError
from .protection import Faults, Ledger, ServiceProtection
from .tls import KeyMaterial, certificate_thumbprint, ensure_key_material

logger = logging.getLogger(__name__)

API_SURFACES = ("dataverse", "graph", "exchange")


@dataclass
class Outcome:
    response: SimResponse | None  # None: close the connection without answering
    hold_seconds: float = 0.0  # keep the connection open this long before closing it


class SimulatorApp:
    def __init__(self, *, state_dir: Path, seed: str, base_url: str, app_count: int = 2) -> None:
        self.state_dir = state_dir
        self.seed_spec = seed
        state_dir.mkdir(parents=True, exist_ok=True)
        self.material: KeyMaterial = ensure_key_material(state_dir)
        self.tenant = Tenant.load_or_create(state_dir / "tenant.json", self.material, app_count=app_count)
        self.store = Store(state_dir / "state.json")
        self.sim = Simulator(
            store=self.store, scheduler=Scheduler(), tenant_id=self.tenant.tenant_id, base_url=base_url
        )
        self.entra = Entra(self.sim, self.tenant, self.material)
        self.protection = ServiceProtection()
        self.faults = Faults()
        self.ledger = Ledger()
        settings_path = state_dir / "settings.json"
        if settings_path.exists():
            saved = json.loads(settings_path.read_text())
            self.sim.settings.update(saved.get("settings", {}))
            self.protection.configure(saved.get("limits", {}))
        if not self.store.load() or self.store.meta.get("seed") != seed:
            self.reseed()

    # -- state ---------------------------------------------------------------------------------------
    def reseed(self) -> None:
        from .seed import build_seed

        self.sim.scheduler.clear()
        tables, meta = build_seed(self.seed_spec, tenant=self.tenant, state_dir=self.state_dir)
        meta["seed"] = self.seed_spec
        self.store.replace(tables, meta)
        self.store.save(force=True)

    def save_settings(self) -> None:
        path = self.state_dir / "settings.json"
        path.write_text(json.dumps({"settings": self.sim.settings, "limits": self.protection.limits}, indent=2))

    def environment(self) -> list[str]:
        base = self.sim.base_url
        lines = [
            f"M365_TENANT_ID={self.tenant.tenant_id}",
            f"M365_AUTHORITY_HOST={base}",
        ]
        for number, app in enumerate(self.tenant.apps, start=1):
            tail = "" if number == 1 else f"_{number}"
            lines += [f"M365_CLIENT_ID{tail}={app.client_id}", f"M365_CLIENT_SECRET{tail}={app.secret}"]
        lines += [
            f"DATAVERSE_URL={base}/dataverse",
            f"GRAPH_URL={base}/graph",
            f"EXCHANGE_ADMIN_URL={base}/exchange",
            f"M365_CA_BUNDLE={self.material.ca_pem}",
            "ENTRA_SIGNIN_ENABLED=true",
            f"ENTRA_CLIENT_ID={self.tenant.signin_client_id}",
            f"ENTRA_CLIENT_SECRET={self.tenant.signin_secret}",
            "# certificate credential for app 1 instead of its secret:",
            f"# M365_CLIENT_CERT_PATH={self.material.app_cert_pem}",
            f"# M365_CLIENT_CERT_THUMBPRINT={certificate_thumbprint(self.material.app_cert_pem)}",
            "# control endpoints (ledger, faults, limits) for tests and benchmarks:",
            f"# M365SIM_CONTROL_URL={base}/_sim",
        ]
        return lines

    def write_environment(self) -> Path:
        path = self.state_dir / "portal.env"
        path.write_text("\n".join(self.environment()) + "\n")
        path.chmod(0o600)
        return path

    # -- requests ---------------------------------------------------------------------------------------
    def dispatch(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Outcome:
        started = time.monotonic()
        parts = urlsplit(target)
        path = unquote(parts.path) if parts.path.startswith("/_sim") else parts.path
        segments = [segment for segment in path.split("/") if segment]
        first = segments[0] if segments else ""
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        if first == "_sim":
            from .control import handle_control

            return Outcome(handle_control(self, method, "/" + "/".join(segments[1:]), query, body))
        if first in API_SURFACES:
            surface = first
        elif first in (self.tenant.tenant_id, "common", "organizations"):
            surface = "entra"
        else:
            return Outcome(SimResponse.json(404, {"error": {"code": "NotFound", "message": f"No surface at {path}"}}))

        prefix = f"/{surface}" if surface in API_SURFACES else ""
        request = SimRequest(
            method=method,
            path=path[len(prefix) :] or "/",
            query=query,
            raw_query=parts.query,
            headers=headers,
            body=body,
            base_url=f"{self.sim.base_url}{prefix}",
        )
        entry: dict[str, Any] = {
            "at": time.time(),
            "method": method,
            "surface": surface,
            "path": request.path,
            "query": parts.query,
            "app": "",
            "status": None,
            "retry_after": None,
            "applied": False,
            "fault": None,
            "operation": operation_name(surface, method, request.path, body),
        }
        try:
            outcome = self._api(surface, request, entry)
        except Exception:
            logger.exception("simulator failed on %s %s", method, target)
            outcome = Outcome(SimResponse.odata_error(500, "0x80040216", "An unexpected error occurred."))
        if outcome.response is not None:
            entry["status"] = outcome.response.status
            entry["applied"] = entry["applied"] or outcome.response.applied
            if outcome.response.status == 429:
                entry["retry_after"] = int(outcome.response.headers.get("Retry-After", "0") or 0)
        entry["ms"] = round((time.monotonic() - started) * 1000, 2)
        self.ledger.record(**entry)
        return outcome

    def _api(self, surface: str, request: SimRequest, entry: dict[str, Any]) -> Outcome:
        if surface == "entra":
            client_id = ""
            if request.method == "POST":
                client_id = dict(parse_qsl(request.body.decode("utf-8", "replace"))).get("client_id", "")
            entry["app"] = client_id or request.query.get("client_id", "")
            return Outcome(self.entra.handle(request))

        principal_or_error = self._authenticate(surface, request)
        if isinstance(principal_or_error, SimResponse):
            return Outcome(principal_or_error)
        request.principal = principal_or_error
        entry["app"] = principal_or_error.client_id

        fault = self.faults.decide(surface, entry["operation"])
        entry["fault"] = fault
        if fault == "429":
            retry = int(self.faults.config["retry_after"])
            return Outcome(
                self._throttled(
                    surface,
                    request,
                    "0x80072322",
                    "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
                    retry,
                )
            )
        if fault == "5xx":
            if surface == "graph":
                return Outcome(
                    graph.graph_error(503, "serviceNotAvailable", "The service is temporarily unavailable.", request)
                )
            return Outcome(SimResponse.odata_error(503, "0x80040216", "The service is temporarily unavailable."))
        if fault == "timeout":
            return Outcome(None, hold_seconds=float(self.faults.config["timeout_hold_seconds"]))
        if fault == "drop":
            return Outcome(None)

        slow = float(self.faults.config["slow_ms"] or 0) / 1000
        if surface == "dataverse":
            refusal = self.protection.admit(request.principal.oid)
            if refusal:
                return Outcome(self._throttled(surface, request, refusal.code, refusal.message, refusal.retry_after))
            started = time.monotonic()
            try:
                if slow:
                    time.sleep(slow)
                from . import dataverse

                response = dataverse.handle(request, self.sim)
            finally:
                self.protection.release(request.principal.oid, time.monotonic() - started)
            response.headers.setdefault("REQ_ID", str(uuid.uuid4()))
            response.headers.setdefault("x-ms-service-request-id", response.headers["REQ_ID"])
            response.headers.setdefault("OData-Version", "4.0")
        elif surface == "graph":
            mailbox = graph.mailbox_key(request.path)
            if mailbox:
                refusal = self.protection.admit_graph(request.principal.client_id, mailbox)
                if refusal:
                    return Outcome(
                        self._throttled(surface, request, refusal.code, refusal.message, refusal.retry_after)
                    )
            try:
                if slow:
                    time.sleep(slow)
                response = graph.handle(request, self.sim)
            finally:
                if mailbox:
                    self.protection.release_graph(request.principal.client_id, mailbox)
        else:
            if slow:
                time.sleep(slow)
            response = exchange.handle(request, self.sim, self.tenant.tenant_id)

        if fault == "lost_response":
            entry["applied"] = response.applied
            return Outcome(None)
        return Outcome(response)

    def _authenticate(self, surface: str, request: SimRequest):
        header = request.header("authorization")
        scheme, _, token = header.partition(" ")
        resource = self.sim.surface_url(surface)
        if scheme.lower() != "bearer" or not token:
            return self._unauthorized(surface, request, "Bearer token is missing.")
        try:
            return self.entra.verify_access_token(token.strip(), audience=resource)
        except TokenError as error:
            return self._unauthorized(surface, request, f"The access token is not valid for {resource}: {error}")

    def _unauthorized(self, surface: str, request: SimRequest, message: str) -> SimResponse:
        authenticate = (
            f'Bearer authorization_uri="{self.sim.base_url}/{self.tenant.tenant_id}/oauth2/authorize", '
            f'resource_id="{self.sim.surface_url(surface)}"'
        )
        if surface == "graph":
            return graph.graph_error(
                401, "InvalidAuthenticationToken", message, request, headers={"WWW-Authenticate": authenticate}
            )
        if surface == "exchange":
            return SimResponse.json(
                401, {"error": {"code": "Unauthorized", "message": message}}, headers={"WWW-Authenticate": authenticate}
            )
        return SimResponse(401, b"", {"WWW-Authenticate": authenticate})

    def _throttled(self, surface: str, request: SimRequest, code: str, message: str, retry_after: int) -> SimResponse:
        headers = {"Retry-After": str(retry_after)}
        if surface == "graph":
            return graph.graph_error(
                429, code if code != "0x80072322" else "TooManyRequests", message, request, headers=headers
            )
        if surface == "exchange":
            return SimResponse.json(429, {"error": {"code": "TooManyRequests", "message": message}}, headers=headers)
        return SimResponse.odata_error(429, code, message, headers=headers)

    def close(self) -> None:
        self.sim.scheduler.stop()
        self.store.save(force=True)


def operation_name(surface: str, method: str, path: str, body: bytes) -> str:
    """What a call does, as the ledger names it and fault targeting matches it.

    Exchange admin calls all go to one URL, so the cmdlet is the operation ("New-Mailbox");
    Dataverse calls are the method and entity set ("POST queues", "PATCH mailboxes").
    """
    if surface == "exchange":
        try:
            return str(json.loads(body.decode("utf-8"))["CmdletInput"]["CmdletName"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return method
    if surface == "dataverse":
        rest = path.split("/api/data/v9.2/", 1)[-1].lstrip("/")
        target = rest.split("/", 1)[0].split("(", 1)[0]
        return f"{method} {target}".strip()
    return f"{method} {path}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""
    app: SimulatorApp  # set on the subclass the server builds

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers: dict[str, str] = {}
        for key, value in self.headers.items():  # repeated headers (two Prefer lines) join as HTTP allows
            key = key.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        outcome = self.app.dispatch(self.command, self.path, headers, body)
        if outcome.response is None:
            if outcome.hold_seconds:
                time.sleep(outcome.hold_seconds)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        response = outcome.response
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _handle


class SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, app_factory, host: str, port: int, state_dir: Path) -> None:
        super().__init__((host, port), _Handler)
        self.port = self.server_address[1]
        self.base_url = f"https://{host}:{self.port}"
        self.app: SimulatorApp = app_factory(self.base_url)
        material = self.app.material
        self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self._ssl.load_cert_chain(material.server_cert_pem, material.server_key_pem)
        self.RequestHandlerClass = type("Handler", (_Handler,), {"app": self.app})
        self._saver_stop = threading.Event()
        self._saver = threading.Thread(target=self._save_loop, name="sim-saver", daemon=True)
        self._saver.start()

    def get_request(self):
        sock, address = self.socket.accept()
        # Headers and body go out in separate writes; without this, Nagle's algorithm and delayed
        # ACKs add ~40 ms to every response.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The TLS handshake runs in the connection's own thread, so a slow client cannot stall accept().
        return self._ssl.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request, client_address) -> None:
        logger.debug("connection from %s ended abruptly", client_address, exc_info=True)

    def _save_loop(self) -> None:
        while not self._saver_stop.wait(1.0):
            try:
                self.app.store.save()
            except OSError:
                logger.exception("could not save simulator state")

    def server_close(self) -> None:
        self._saver_stop.set()
        super().server_close()
        self.app.close()


def build_server(*, host: str, port: int, state_dir: Path, seed: str, app_count: int = 2) -> SimulatorServer:
    return SimulatorServer(
        lambda base_url: SimulatorApp(state_dir=state_dir, seed=seed, base_url=base_url, app_count=app_count),
        host,
        port,
        state_dir,
    )
