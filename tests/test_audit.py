"""The audit trail (node.audit.trail): DICOM PS3.15 A.5 messages in the local file and to a
syslog collector over TLS, TCP and UDP, parsed back; each event once for a scenario."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts

from support.nodes import AUTH, DCMTK_ENV, ECHOSCU, FAST, free_port, storescu, wait_for
from support.metrics_support import one, scrape
from node.audit import messages as am
from node.audit.trail import AuditTrail, _AuditFile
from node.audit.syslog import BOM, Collector, SyslogSender, parse_collector
from node.config import load_settings
from test_tls import pki  # noqa: F401 - the fixture

EVENT = {code[0]: code[2] for code in (
    am.APPLICATION_ACTIVITY, am.BEGIN_TRANSFERRING, am.INSTANCES_ACCESSED,
    am.INSTANCES_TRANSFERRED, am.SECURITY_ALERT, am.USER_AUTHENTICATION)}


def event_of(xml: str) -> tuple[str, str, tuple[str, ...]]:
    """(EventID meaning, action, EventTypeCode meanings) of one message."""
    root = ET.fromstring(xml)
    ident = root.find("EventIdentification")
    types = tuple(t.get("originalText") for t in ident.findall("EventTypeCode"))
    return ident.find("EventID").get("originalText"), ident.get("EventActionCode"), types


def messages(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# -- the collector ------------------------------------------------------------------------

class Collector_:
    """A syslog collector on loopback: octet-counted frames over TLS or TCP, or datagrams."""

    def __init__(self, scheme: str, context: ssl.SSLContext | None = None):
        self.scheme, self.context = scheme, context
        self.frames: list[bytes] = []
        kind = socket.SOCK_DGRAM if scheme == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        if scheme != "udp":
            self.sock.listen()
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://{'localhost' if self.scheme == 'tls' else '127.0.0.1'}:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                if self.scheme == "udp":
                    self.frames.append(self.sock.recvfrom(65536)[0])
                    continue
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        conn.settimeout(None)
        if self.context is not None:
            conn = self.context.wrap_socket(conn, server_side=True)
        buffer = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while b" " in buffer:
                length, _, rest = buffer.partition(b" ")
                if len(rest) < int(length):
                    break
                self.frames.append(rest[:int(length)])
                buffer = rest[int(length):]

    def xml(self) -> list[str]:
        """Each frame's RFC 5424 header checked, its message returned."""
        out = []
        for frame in self.frames:
            text = frame.decode("utf-8")
            header, _, message = text.partition(" " + BOM)
            pri_version, stamp, host, app, pid, msgid, sd = header.split(" ")
            assert (pri_version, app, msgid, sd) == ("<85>1", "trauma-node", "IHE+RFC-3881", "-")
            assert stamp.endswith("Z") and pid.isdigit() and host
            out.append(message)
        return out

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


def server_context(pki) -> ssl.SSLContext:
    key, cert = pki["server"]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"]))
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED  # ATNA: mutual authentication
    return context


# -- messages and the file ----------------------------------------------------------------

def test_a_message_is_one_line_of_the_schema_with_the_study_and_no_patient():
    message = am.AuditMessage(am.INSTANCES_TRANSFERRED, "C", participants=[
        am.application_entity("CT\n1", True, am.SOURCE, "10.0.0.5")],
        objects=[am.study("1.2.3", {"1.2.840.10008.5.1.4.1.1.2": 3})],
        outcome_description="line\nbreak")
    xml = message.xml("host", "SITE")
    assert "\n" not in xml
    root = ET.fromstring(xml)
    assert event_of(xml) == ("DICOM Instances Transferred", "C", ())
    assert root.find("EventIdentification/EventID").get("csd-code") == "110104"
    assert root.find("EventIdentification/EventOutcomeDescription").text == "line\nbreak"
    participant = root.find("ActiveParticipant")
    assert participant.get("UserID") == "CT\n1" and participant.get("UserIsRequestor") == "true"
    assert participant.get("NetworkAccessPointTypeCode") == "2"
    assert participant.find("RoleIDCode").get("csd-code") == "110153"
    source = root.find("AuditSourceIdentification")
    assert (source.get("AuditSourceID"), source.get("AuditEnterpriseSiteID")) == ("host", "SITE")
    study = root.find("ParticipantObjectIdentification")
    assert (study.get("ParticipantObjectID"), study.get("ParticipantObjectTypeCode"),
            study.get("ParticipantObjectTypeCodeRole")) == ("1.2.3", "2", "3")
    assert study.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"
    assert study.find("SOPClass").attrib == {"UID": "1.2.840.10008.5.1.4.1.1.2",
                                            "NumberOfInstances": "3"}
    assert len(root.findall("ParticipantObjectIdentification")) == 1  # no patient


def test_the_file_rotates_by_size_and_never_rewrites_a_line(tmp_path):
    audit_file = _AuditFile(tmp_path / "audit" / "audit.log", max_bytes=300)
    lines = [f"<m n='{i}'>" + "x" * 90 + "</m>" for i in range(10)]
    for line in lines:
        audit_file.append(line)
    files = sorted((tmp_path / "audit").iterdir())
    assert len(files) > 3
    assert all(f.stat().st_size <= 300 for f in files)
    kept = [line for f in files if f.name != "audit.log" for line in messages(f)]
    assert kept + messages(tmp_path / "audit" / "audit.log") == lines


def test_include_patient_adds_the_patient(tmp_path):
    settings = load_settings("/dev/null", env={}, overrides={
        "node.data_dir": str(tmp_path), "audit.include_patient": True})
    trail = AuditTrail(settings, patient_lookup=lambda uid: ("PID-7", "DOE^JANE"))
    trail.accessed("1.2.3", "api.tokens[0]", "127.0.0.1", "GET /studies/1.2.3")
    root = ET.fromstring(messages(AuditTrail.file_path(settings))[0])
    person = root.findall("ParticipantObjectIdentification")[1]
    assert (person.get("ParticipantObjectID"), person.find("ParticipantObjectName").text,
            person.get("ParticipantObjectTypeCode")) == ("PID-7", "DOE^JANE", "1")


@pytest.mark.parametrize("url, problem", [
    ("syslog://h:514", "scheme"), ("tcp://", "no host"), ("udp://h:99999", "port"),
    ("tls://localhost:6514", "needs audit.ca_certificates")])
def test_bad_syslog_settings_are_named(url, problem):
    with pytest.raises(Exception) as caught:
        load_settings("/dev/null", env={"TRAUMA_NODE_AUDIT_SYSLOG": url})
    assert "audit.syslog" in str(caught.value) and problem in str(caught.value)


# -- syslog -------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["tcp", "udp"])
def test_frames_reach_a_collector(scheme):
    collector = Collector_(scheme)
    outcomes = Counter()
    sender = SyslogSender(parse_collector(collector.url), None, 100,
                          lambda o: outcomes.update([o]), "node-host")
    sender.start()
    try:
        for i in range(3):
            sender.submit(f"<AuditMessage n='{i}'/>")
        wait_for(lambda: len(collector.frames) == 3, 10, what="3 frames")
        assert [ET.fromstring(x).get("n") for x in collector.xml()] == ["0", "1", "2"]
        assert outcomes == {"sent": 3}
    finally:
        sender.stop(1)
        collector.close()


def test_a_collector_down_never_blocks_and_the_queue_is_bounded():
    port = free_port()  # nobody listens
    outcomes = Counter()
    sender = SyslogSender(Collector("tcp", "127.0.0.1", port), None, 3,
                          lambda o: outcomes.update([o]), "node-host")
    sender.start()
    started = time.monotonic()
    for i in range(10):
        sender.submit(f"<AuditMessage n='{i}'/>")
    assert time.monotonic() - started < 0.5
    assert sender.queued() == 3 and outcomes["dropped"] == 7
    sender.stop(0.2)


# -- the scenario -------------------------------------------------------------------------

class ResultsSCP:
    """A destination that accepts every storage class and keeps what it got."""

    def __init__(self):
        self.received: list[str] = []
        self.ae = AE(ae_title="RESULTS")
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax)
        self.port = free_port()
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event):
        self.received.append(str(event.request.AffectedSOPClassUID))
        return 0x0000

    def close(self):
        self.server.shutdown()


def scenario_config(pki, collector: Collector_, scp: ResultsSCP) -> str:
    key, cert = pki["client"]
    return FAST + f"""
[delivery]
base_delay_s = 0.5
max_delay_s = 1.0

[audit]
syslog = "{collector.url}"
ca_certificates = "{pki['ca']}"
certificate = "{cert}"
private_key = "{key}"

[[destinations]]
name = "results"
ae_title = "RESULTS"
host = "127.0.0.1"
port = {scp.port}
objects = ["sr"]
"""


def test_each_event_once_in_the_file_and_at_the_collector(node_factory, phantom_factory, pki):
    truth = phantom_factory("audit", slices=12, rows=64, cols=64)
    study_uid = truth.spec.study_uid
    collector, scp = Collector_("tls", server_context(pki)), ResultsSCP()
    try:
        node = node_factory(scenario_config(pki, collector, scp))
        audit_log = node.data_dir / "audit" / "audit.log"
        # A refused association: not our AE title.
        refused = subprocess.run([ECHOSCU, "-aec", "NOT_US", "127.0.0.1", str(node.dicom_port)],
                                 env=DCMTK_ENV, capture_output=True, text=True, timeout=30)
        assert refused.returncode != 0
        storescu([truth.paths[0].parent], node.dicom_port)
        node.wait_series_state(truth.spec.series_uid, {"done"}, timeout=120)
        wait_for(lambda: scp.received, 60, what="the SR delivered")
        assert httpx.get(f"{node.url}/studies/{study_uid}", headers=AUTH,
                         timeout=10).status_code == 200
        assert httpx.get(f"{node.url}/studies", headers={"Authorization": "Bearer wrong-token"},
                         timeout=10).status_code == 401
        with httpx.Client(timeout=10) as client:
            metrics = scrape(client, node.url)
        assert one(metrics, "trauma_node_audit_messages_total", outcome="dropped") == 0
        assert node.stop() == 0

        lines = messages(audit_log)
        events = Counter(event_of(x) for x in lines)
        assert events == {
            ("Application Activity", "E", ("Application Start",)): 1,
            ("Security Alert", "E", ("Node Authentication",)): 1,
            ("Begin Transferring DICOM Instances", "E", ()): 1,
            ("DICOM Instances Transferred", "C", ()): 1,
            ("DICOM Instances Transferred", "R", ()): 1,
            ("DICOM Instances Accessed", "R", ()): 1,
            ("User Authentication", "E", ("Login",)): 1,
            ("Application Activity", "E", ("Application Stop",)): 1,
        }, lines
        wait_for(lambda: len(collector.frames) == len(lines), 10, what="every frame")
        assert collector.xml() == lines
        by_event = {event_of(x)[:2]: ET.fromstring(x) for x in lines}

        received = by_event[("DICOM Instances Transferred", "C")]
        study = received.find("ParticipantObjectIdentification")
        assert study.get("ParticipantObjectID") == study_uid
        assert study.find("SOPClass").get("NumberOfInstances") == "12"
        roles = {p.find("RoleIDCode").get("originalText"): p.get("UserID")
                 for p in received.findall("ActiveParticipant")}
        assert roles == {"Source Role ID": "STORESCU", "Destination Role ID": "TRAUMA_AI"}

        sent = by_event[("DICOM Instances Transferred", "R")]
        assert sent.find("ParticipantObjectIdentification").get("ParticipantObjectID") == study_uid
        assert {p.get("UserID") for p in sent.findall("ActiveParticipant")} == {
            "TRAUMA_AI", "RESULTS"}

        accessed = by_event[("DICOM Instances Accessed", "R")]
        user = accessed.find("ActiveParticipant")
        assert user.get("UserID") == "api.tokens[0]" and user.get("UserIsRequestor") == "true"
        alert = by_event[("Security Alert", "E")]
        assert alert.find("EventIdentification").get("EventOutcomeIndicator") == "4"
        detail = alert.find("ParticipantObjectIdentification/ParticipantObjectDetail")
        assert "NOT_US" in base64.b64decode(detail.get("value")).decode()
        text = audit_log.read_text()
        assert "PHANTOM" not in text and "test-token" not in text and "wrong-token" not in text

        # A restart with another configuration: one Security Alert saying what kind.
        node.config_path.write_text(node.config_path.read_text().replace(
            "max_delay_s = 1.0", "max_delay_s = 2.0") + "[network]\nmax_associations = 8\n")
        node.start()
        assert node.stop() == 0
        later = messages(audit_log)[len(lines):]
        changes = [event_of(x) for x in later if event_of(x)[0] == "Security Alert"]
        assert changes == [("Security Alert", "E", ("Network Configuration",
                                                     "Software Configuration"))]
        node.start()  # the same configuration again: no change
        assert node.stop() == 0
        assert not [x for x in messages(audit_log)[len(lines) + len(later):]
                    if event_of(x)[0] == "Security Alert"]
    finally:
        collector.close()
        scp.close()
