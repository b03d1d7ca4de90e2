"""Delivery to a DICOMweb destination (url): STOW-RS to a real Orthanc with its DICOMweb
plugin on loopback, so over http with allow_insecure_http = true (one test runs it over
HTTPS); the outbox's guarantees as for C-STORE: backoff, dead letters, once only.

Orthanc lists every instance it receives and how it came (Orthanc.receptions): "Plugins"
is its DICOMweb plugin's STOW-RS, "DicomProtocol" a C-STORE.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
import xml.etree.ElementTree as ET
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

import pydicom
import pytest

from node import metrics
from node.config import load_settings
from node.store import outbox
from node.store.database import Index
from node.work.delivery import Delivery
from support.deliveries import in_doubt, killed_delivering, outbox_rows
from support.nodes import FAST, free_port, storescu, wait_for
from support.orthanc import Orthanc

PASSWORD = "orthanc-pw-7c1e"  # what must never show in a log or the audit trail
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def pacs_for(tmp_path, **options) -> Orthanc:
    return Orthanc(tmp_path / "orthanc", free_port(), free_port(), dicomweb=True,
                   users={"trauma": PASSWORD}, **options)


def web_destination(pacs: Orthanc, **fields) -> dict:
    """A [[destinations]] entry for the PACS's DICOMweb service, with basic auth."""
    return {"name": "pacs", "url": f"{pacs.url}/dicom-web", "allow_insecure_http": True,
            "auth": "basic", "username": "trauma", "secret_env": "PACS_PASSWORD", **fields}


def settings_for(tmp_path, destination: dict, **overrides):
    settings = load_settings("/dev/null", env={
        "TRAUMA_NODE_PEERS": "[]", "TRAUMA_NODE_DESTINATIONS": json.dumps([destination])},
        overrides={"node.data_dir": str(tmp_path / "data"), "delivery.base_delay_s": 0.2,
                   "delivery.max_delay_s": 1.0, "delivery.max_attempts": 3, **overrides})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def states(index, study_uid) -> list[tuple[str, int]]:
    return [(d["state"], d["attempts"]) for d in outbox.items_for_study(index, study_uid)]


@pytest.fixture
def password(monkeypatch):
    monkeypatch.setenv("PACS_PASSWORD", PASSWORD)


def test_a_dicomweb_destination_names_its_secret_and_is_queried_when_in_doubt(tmp_path,
                                                                             password):
    settings = settings_for(tmp_path, {
        "name": "pacs", "url": "https://pacs.example.org/dicom-web", "auth": "basic",
        "username": "trauma", "secret_env": "PACS_PASSWORD"})
    [dest] = settings.destinations
    assert (dest.protocol, dest.verify) == ("dicomweb", "query")
    assert PASSWORD not in repr(settings)  # only where to read it
    [dimse] = settings_for(tmp_path, {"name": "pacs", "ae_title": "PACS", "host": "pacs",
                                      "port": 104}).destinations
    assert (dimse.protocol, dimse.verify) == ("dimse", "c-find")


def test_seg_and_sr_reach_the_pacs_over_stow(tmp_path, node_factory, phantom_factory,
                                             password):
    truth = phantom_factory("dicomweb-e2e", slices=40, rows=128, cols=128,
                            pixel_spacing=(3.125, 3.125), blood="small")
    pacs = pacs_for(tmp_path).start()
    try:
        dest = web_destination(pacs)
        node = node_factory(FAST + "\n[[destinations]]\n" + "".join(
            f"{key} = {json.dumps(value)}\n" for key, value in dest.items()))
        storescu([truth.paths[0].parent], node.dicom_port)
        wait_for(lambda: len(pacs.receptions("Plugins")) == 2, timeout=180,
                 what="SEG and SR stored over STOW-RS")
        stored = {pydicom.dcmread(pydicom.filebase.DicomBytesIO(pacs.file(sop))).SOPClassUID
                  for sop in pacs.receptions("Plugins")}
        assert stored == {SEG_STORAGE, COMPREHENSIVE_3D_SR}
        assert pacs.receptions("DicomProtocol") == []  # none by C-STORE
        wait_for(lambda: sorted((d["kind"], d["state"]) for d in node.studies()[0]["deliveries"])
                 == [("seg", "sent"), ("sr", "sent")], timeout=30, what="outbox rows sent")
        audit = (node.data_dir / "audit" / "audit.log").read_text()
        sent = [ET.fromstring(line) for line in audit.splitlines()
                if 'EventActionCode="R"' in line and "DICOM Instances Transferred" in line]
        receivers = {p.get("UserID") for message in sent
                     for p in message.iter("ActiveParticipant")
                     if p.get("UserIsRequestor") == "false"}
        assert receivers == {dest["url"]}  # who got the results: the DICOMweb service
        assert PASSWORD not in node.log() + audit
    finally:
        pacs.stop()


@pytest.fixture
def web_setup(tmp_path, phantom_factory, password):
    pacs = pacs_for(tmp_path)
    truth = phantom_factory("dicomweb", slices=3, rows=32, cols=32)
    # A first retry a second later: the test's next pass comes before it, even on a busy host.
    settings = settings_for(tmp_path, web_destination(pacs), **{
        "delivery.base_delay_s": 1.0, "delivery.max_delay_s": 2.0})
    index = Index(settings.database_url)
    yield settings, index, pacs, truth
    pacs.stop()
    index.close()


def test_wrong_credentials_are_a_dead_letter_at_once_with_the_reason(
        tmp_path, web_setup, caplog, monkeypatch):
    settings, index, pacs, truth = web_setup
    monkeypatch.setenv("PACS_PASSWORD", "not-the-password")
    pacs.start()
    outbox.enqueue(index, outbox_rows(truth))
    with caplog.at_level(logging.INFO):
        assert Delivery(settings, index).deliver_due() == 0
    # Refused for good (HTTP 401): no retries that cannot succeed, the reason for the admin.
    rows = outbox.items_for_study(index, truth.spec.study_uid)
    assert [(r["state"], r["attempts"]) for r in rows] == [("dead", 1)] * 3
    assert all("STOW-RS HTTP 401" in r["last_error"] and "not authorized" in r["last_error"]
               for r in rows)
    assert pacs.receptions("Plugins") == [] and pacs.instance_uids() == set()
    assert "not-the-password" not in caplog.text


def test_a_pacs_down_gets_everything_once_after_backoff(web_setup):
    settings, index, pacs, truth = web_setup
    delivery = Delivery(settings, index)
    outbox.enqueue(index, outbox_rows(truth))
    assert delivery.deliver_due() == 0  # the PACS is down: no connection
    assert states(index, truth.spec.study_uid) == [("pending", 1)] * 3
    assert in_doubt(settings.data_dir) == [("pending", False)] * 3  # nothing went out
    assert delivery.deliver_due() == 0  # not due yet: backing off
    pacs.start()
    wait_for(lambda: delivery.deliver_due() == 3, timeout=10, what="delivery after backoff")
    assert Counter(pacs.receptions("Plugins")) == {sop: 1 for sop in truth.sop_instance_uids}
    for sop, path in zip(truth.sop_instance_uids, truth.paths):
        assert pydicom.dcmread(path).PixelData == pydicom.dcmread(
            pydicom.filebase.DicomBytesIO(pacs.file(sop))).PixelData
    time.sleep(2.2)  # sent rows are never sent again
    assert delivery.deliver_due() == 0
    assert states(index, truth.spec.study_uid) == [("sent", 2)] * 3


@pytest.mark.parametrize("verify, when, copies_of_first, outcome", [
    # Stored, then killed before it was recorded; sent again unasked.
    ("resend", "acknowledged", 2, "unverified"),
    # Asked first (QIDO-RS): the PACS has it, so it is not sent again.
    ("query", "acknowledged", 1, "present"),
    # Killed before the request went out: the PACS lacks it, so it is sent.
    ("query", "started", 1, "absent"),
])
def test_an_attempt_cut_off_by_a_crash_is_settled_by_a_query(
        tmp_path, phantom_factory, caplog, password, verify, when, copies_of_first, outcome):
    pacs = pacs_for(tmp_path).start()
    try:
        dest = web_destination(pacs, verify_interrupted=verify)
        settings = settings_for(tmp_path, dest)
        index = Index(settings.database_url)
        truth = phantom_factory("dicomweb-interrupted", slices=3, rows=32, cols=32)
        outbox.enqueue(index, outbox_rows(truth))
        first, *others = [sop for _, sop in sorted(zip(map(str, truth.paths),
                                                       truth.sop_instance_uids))]  # sent so

        killed_delivering(settings.data_dir, json.dumps([dest]), when)
        assert pacs.receptions("Plugins") == ([first] if when == "acknowledged" else [])
        assert in_doubt(settings.data_dir) == [("pending", True)] + [("pending", False)] * 2

        delivery = Delivery(settings, index)  # the restarted node
        with caplog.at_level(logging.INFO, logger="trauma_node.delivery"):
            assert delivery.deliver_due() == 3 - (outcome == "present")
        assert Counter(pacs.receptions("Plugins")) == {first: copies_of_first,
                                                       **{sop: 1 for sop in others}}
        assert in_doubt(settings.data_dir) == [("sent", False)] * 3
        assert delivery.counters.value(metrics.INTERRUPTED_DELIVERIES, outcome) == 1
        assert {"present": f"{first} confirmed present at pacs after an interrupted attempt",
                "absent": f"{first} not at pacs after an interrupted attempt",
                "unverified": "it may receive them twice"}[outcome] in caplog.text
        index.close()
    finally:
        pacs.stop()


class _StowAnswers(BaseHTTPRequestHandler):
    """A DICOMweb server that answers every STOW-RS with the status and body it is given."""
    status = 200
    body: dict | None = None
    authorizations: list[str] = []  # the Authorization header of each request

    def do_POST(self) -> None:
        self.authorizations.append(self.headers.get("Authorization", ""))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        payload = json.dumps(self.body).encode() if self.body is not None else b""
        self.send_response(self.status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


def _serve(handler: type, tls: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    Thread(target=server.serve_forever, daemon=True).start()
    return server


def _failed(sop: str, reason: int) -> dict:
    """A STOW-RS answer (DICOM JSON) whose FailedSOPSequence lists sop with reason."""
    return {"00081198": {"vr": "SQ", "Value": [{
        "00081155": {"vr": "UI", "Value": [sop]}, "00081197": {"vr": "US", "Value": [reason]}}]}}


@pytest.mark.parametrize("status, reason, state, error, doubt", [
    (409, 0xA700, "pending", "FailureReason 0xA700: retried later", False),  # out of resources
    (409, 0xC000, "dead", "FailureReason 0xC000: refused", False),  # cannot understand
    (202, 0xA900, "dead", "FailureReason 0xA900: refused", False),  # does not match its class
    (202, 0x0111, "sent", None, False),  # a duplicate: the PACS has it already
    (400, None, "dead", "STOW-RS HTTP 400 Bad Request: refused", False),
    (413, None, "dead", "STOW-RS HTTP 413", False),
    (429, None, "pending", "STOW-RS HTTP 429 Too Many Requests: busy", False),
    # A server error may come from a gateway in front of a server that stored it.
    (503, None, "pending", "STOW-RS HTTP 503 Service Unavailable: server failed", True),
])
def test_stow_answers_decide_between_retry_and_dead_letter(tmp_path, phantom_factory, status,
                                                           reason, state, error, doubt):
    truth = phantom_factory("dicomweb", slices=3, rows=32, cols=32)
    sop = truth.sop_instance_uids[0]
    answers = type("Answers", (_StowAnswers,), {
        "status": status, "body": _failed(sop, reason) if reason is not None else None})
    server = _serve(answers)
    try:
        settings = settings_for(tmp_path, {
            "name": "pacs", "url": f"http://127.0.0.1:{server.server_port}/dicom-web",
            "allow_insecure_http": True}, **{"delivery.max_attempts": 12})
        index = Index(settings.database_url)
        outbox.enqueue(index, outbox_rows(truth)[:1])
        Delivery(settings, index).deliver_due()
        [row] = outbox.items_for_study(index, truth.spec.study_uid)
        assert (row["state"], row["attempts"]) == (state, 1)
        assert (row["last_error"] is None) if error is None else error in row["last_error"]
        assert in_doubt(settings.data_dir) == [(state, doubt)]
        index.close()
    finally:
        server.shutdown()
        server.server_close()


def test_https_is_verified_against_the_destinations_ca(tmp_path, phantom_factory):
    """Orthanc 1.10's own HTTPS crashes on this OpenSSL, so a small STOW-RS server stands in."""
    from test_tls import make_ca, make_leaf

    ca_key, ca_cert, ca_path = make_ca(tmp_path, "hospital-ca")
    key, cert = make_leaf(tmp_path, "pacs", ca_key, ca_cert)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server = _serve(_StowAnswers, tls)
    truth = phantom_factory("dicomweb", slices=3, rows=32, cols=32)
    dest = {"name": "pacs", "url": f"https://127.0.0.1:{server.server_port}/dicom-web"}
    try:
        # Without the hospital's CA the server's certificate is not trusted: nothing goes.
        settings = settings_for(tmp_path, dest)
        index = Index(settings.database_url)
        outbox.enqueue(index, outbox_rows(truth)[:1])
        assert Delivery(settings, index).deliver_due() == 0
        [row] = outbox.items_for_study(index, truth.spec.study_uid)
        assert row["state"] == "pending" and "certificate verify failed" in row["last_error"]
        assert in_doubt(settings.data_dir) == [("pending", False)]
        settings = settings_for(tmp_path, {**dest, "ca_certificates": str(ca_path)})
        wait_for(lambda: Delivery(settings, index).deliver_due() == 1, timeout=10,
                 what="delivery over HTTPS")
        index.close()
    finally:
        server.shutdown()
        server.server_close()


def test_a_bearer_token_is_read_from_its_file_at_each_pass_and_never_logged(
        tmp_path, phantom_factory, caplog):
    token = tmp_path / "pacs.token"
    token.write_text("tok-1f2e3d\n")
    answers = type("Answers", (_StowAnswers,), {"authorizations": []})
    server = _serve(answers)
    truth = phantom_factory("dicomweb", slices=3, rows=32, cols=32)
    try:
        settings = settings_for(tmp_path, {
            "name": "pacs", "url": f"http://127.0.0.1:{server.server_port}/dicom-web",
            "allow_insecure_http": True, "auth": "bearer", "secret_file": str(token)})
        index = Index(settings.database_url)
        delivery = Delivery(settings, index)
        rows = outbox_rows(truth)
        with caplog.at_level(logging.DEBUG):
            outbox.enqueue(index, rows[:1])
            assert delivery.deliver_due() == 1
            token.write_text("tok-rotated\n")  # the admin rotates it: no restart needed
            outbox.enqueue(index, rows[1:2])
            assert delivery.deliver_due() == 1
            token.unlink()  # unreadable: nothing goes, retried later with the reason
            outbox.enqueue(index, rows[2:])
            assert delivery.deliver_due() == 0
        assert answers.authorizations == ["Bearer tok-1f2e3d", "Bearer tok-rotated"]
        last = outbox.items_for_study(index, truth.spec.study_uid)[-1]
        assert last["state"] == "pending" and "pacs.token unreadable" in last["last_error"]
        assert "tok-" not in caplog.text
        index.close()
    finally:
        server.shutdown()
        server.server_close()
