"""Loopback receivers of critical-result alerts, one per kind, each in a thread: a webhook
that checks the HMAC signature, a FHIR endpoint that validates what it is sent with
fhir.resources and keeps one copy per identifier (conditional create), and an MLLP
listener that answers each HL7 message with an ACK of a chosen code."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import hl7
from fhir.resources.R4B.bundle import Bundle

from support.nodes import free_port

WEBHOOK_SECRET = "alert-test-secret-0123456789"


class _HttpReceiver:
    """An HTTP server on 127.0.0.1 that may start later than it is made (a receiver down
    and coming back) and answers `status` (or `statuses`, one per request, then 200)."""

    def __init__(self, status: int = 200, tls: tuple[Path, Path] | None = None):
        """tls: (key, certificate) PEM files: https."""
        self.port = free_port()
        self.tls = tls
        self.status = status
        self.statuses: list[int] = []
        self.requests: list[dict] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http{'s' if self.tls else ''}://127.0.0.1:{self.port}/{self.path}"

    def start(self) -> "_HttpReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else receiver.status
                answer = receiver.handle(dict(self.headers), raw, status, time.time())
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certfile=self.tls[1], keyfile=self.tls[0])
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class WebhookReceiver(_HttpReceiver):
    path = "hook"

    def handle(self, headers: dict, raw: bytes, status: int, at: float) -> bytes:
        timestamp = headers["X-Trauma-Node-Timestamp"]
        expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), timestamp.encode() + b"." + raw,
                                        hashlib.sha256).hexdigest()
        self.requests.append({
            "at": at, "status": status, "raw": raw, "body": json.loads(raw), "headers": headers,
            "signed": hmac.compare_digest(expected, headers["X-Trauma-Node-Signature"]),
            "fresh": abs(at - int(timestamp)) < 300})
        return b"{}"


class FhirReceiver(_HttpReceiver):
    """Accepts transaction Bundles; `resources` holds one copy per identifier."""

    path = "fhir"

    def __init__(self, status: int = 200, tls: tuple[Path, Path] | None = None):
        super().__init__(status, tls)
        self.resources: dict[str, dict] = {}

    def handle(self, headers: dict, raw: bytes, status: int, at: float) -> bytes:
        bundle = Bundle.model_validate_json(raw)  # raises (a 500 to the node) if invalid
        self.requests.append({"at": at, "status": status, "raw": raw,
                              "bundle": json.loads(raw), "headers": headers})
        if status == 200:
            for entry in json.loads(raw)["entry"]:
                key = entry["request"]["ifNoneExist"]
                self.resources.setdefault(key, entry["resource"])
        return json.dumps({"resourceType": "Bundle", "type": "transaction-response",
                           "entry": [{"response": {"status": "201 Created"}}
                                     for _ in bundle.entry]}).encode()


class MllpListener:
    """Answers each framed HL7 message with an ACK whose MSA-1 is `code` (or the next of
    `codes`); "" closes the connection without one."""

    def __init__(self, code: str = "AA"):
        self.port = free_port()
        self.code = code
        self.codes: list[str] = []
        self.messages: list[dict] = []
        self._sock: socket.socket | None = None

    def start(self) -> "MllpListener":
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._sock.settimeout(0.2)
        self._stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\x1c\x0d" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if not data.startswith(b"\x0b"):
                    continue
                text = data[1:data.index(b"\x1c\x0d")].decode()
                message = hl7.parse(text)
                code = self.codes.pop(0) if self.codes else self.code
                self.messages.append({"at": time.time(), "text": text, "message": message,
                                      "code": code})
                if not code:  # took it, closed without an ACK
                    continue
                control = str(message.segment("MSH")[10])
                ack = (f"MSH|^~\\&|RIS|HOSP|TRAUMA_NODE||20260101000000||ACK^R01^ACK|A{control}"
                       f"|P|2.5.1\rMSA|{code}|{control}|" + ("" if code == "AA" else "rejected"))
                conn.sendall(b"\x0b" + ack.encode() + b"\x1c\x0d")

    def stop(self) -> None:
        if self._sock is not None:
            self._stopped.set()
            self._sock.close()
