"""Critical-result alerts (node.alerts) against loopback receivers of each kind: what a
receiver is sent, that it is sent once, retried while the receiver is down, and a dead
letter with its reason when the receiver refuses it for good. The node's own process is
driven in tests/test_alerts_node.py."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from fhir.resources.R4B.bundle import Bundle
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom import Dataset
from sqlalchemy import select

from support.alert_receivers import WEBHOOK_SECRET, FhirReceiver, MllpListener, WebhookReceiver
from support.qa_support import api_settings, findings_dict

from node.store import outbox, status
from node.store.retention import Retention
from node.alerts.delivery import Alerts
from node.alerts.triggers import fired
from node.config import AlertReceiver, load_settings
from node.settings_loader import ConfigError
from node.store.database import Index, Instance, Job, JobState, Series, Study
from node.store.tables import AlertItem

PATIENT_NAME, PATIENT_ID = "PHANTOM^ABDOMEN", "PHANTOM-0001"
ACCESSION = "ACC-7781"


def webhook(receiver: WebhookReceiver, **extra) -> AlertReceiver:
    return AlertReceiver("hook", "webhook", url=receiver.url, secret_env="ALERT_HOOK_SECRET",
                         allow_insecure_http=True, timeout_s=2.0, **extra)


def fhir(receiver: FhirReceiver) -> AlertReceiver:
    return AlertReceiver("fhir", "fhir", url=receiver.url, allow_insecure_http=True,
                         timeout_s=2.0)


def mllp(listener: MllpListener | int) -> AlertReceiver:
    port = listener if isinstance(listener, int) else listener.port
    return AlertReceiver("ris", "hl7", host="127.0.0.1", port=port, timeout_s=2.0,
                         receiving_application="RIS", receiving_facility="HOSP")


@pytest.fixture
def node_db(tmp_path, monkeypatch):
    """A node's settings and database holding finished jobs of phantom results, their first
    image in the spool with a patient's name and an accession number."""
    monkeypatch.setenv("ALERT_HOOK_SECRET", WEBHOOK_SECRET)
    settings = api_settings(tmp_path / "data")
    settings.spool_dir.mkdir(parents=True)
    settings.delivery.base_delay_s = 0.2
    settings.delivery.max_attempts = 5
    index = Index(settings.database_url)

    def finish(kind: str, result: dict | None = None, study_uid: str | None = None) -> str:
        """A finished job of a new series, in a new study or in study_uid."""
        study_uid, series_uid = study_uid or generate_uid(), generate_uid()
        image = settings.spool_dir / f"{series_uid}.dcm"
        _image(study_uid, series_uid).save_as(image, enforce_file_format=True)
        with index.session() as session, session.begin():
            study = session.execute(select(Study).where(
                Study.study_uid == study_uid)).scalar() or Study(study_uid=study_uid)
            series = Series(study=study, series_uid=series_uid, state="queued")
            session.add(series)
            session.flush()
            session.add(Instance(series_id=series.id, sop_instance_uid=generate_uid(),
                                 sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                                 transfer_syntax_uid=ExplicitVRLittleEndian, path=image.name,
                                 size_bytes=1, series_version=1))
            session.add(Job(series_id=series.id, series_version=1, state=JobState.DONE.value,
                            finished_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
                            result=result or findings_dict(kind)))
        return study_uid

    yield settings, index, finish
    index.close()


def _image(study_uid: str, series_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientName, ds.PatientID, ds.AccessionNumber = PATIENT_NAME, PATIENT_ID, ACCESSION
    return ds


def alerts(index: Index) -> list[AlertItem]:
    with index.session() as session:
        return list(session.execute(select(AlertItem).order_by(AlertItem.id)).scalars())


def send_until(node: Alerts, done, timeout_s: float = 10.0) -> None:
    """Sender passes, as `serve` runs them, until done() (bounded)."""
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        node.send_due()
        time.sleep(0.05)
    assert done(), [(a.receiver, a.state, a.last_error) for a in alerts(node.index)]


def alert_one_bleed(node_db, receiver: AlertReceiver) -> tuple[Alerts, str]:
    """A bleeding study's alert queued for one receiver and sent until it is delivered."""
    settings, index, finish = node_db
    settings.alerts = [receiver]
    node = Alerts(settings, index, "node-1")
    study_uid = finish("bleed")
    node.check_finished()
    send_until(node, lambda: alerts(index)[0].state == "sent")
    return node, study_uid


def test_a_high_risk_result_with_extravasation_meets_both_triggers_and_a_clean_one_none():
    assert fired(findings_dict("bleed")) == ["high_risk", "active_extravasation"]
    assert fired(findings_dict("clean")) == []
    not_assessed = {**findings_dict("bleed"), "risk_tier": "not_assessed"}
    assert fired(not_assessed) == []


def test_each_receiver_gets_the_alert_once_with_no_patient_name(node_db):
    settings, index, finish = node_db
    hook, server, ris = WebhookReceiver().start(), FhirReceiver().start(), MllpListener().start()
    try:
        settings.alerts = [webhook(hook), fhir(server), mllp(ris)]
        node = Alerts(settings, index, "node-1")
        study_uid = finish("bleed")
        finish("clean")
        assert node.check_finished() == 3
        assert node.check_finished() == 0  # each finished job is checked once
        send_until(node, lambda: all(a.state == "sent" for a in alerts(index)))
        assert node.send_due() == 0  # sent once: never again
    finally:
        hook.stop(), server.stop(), ris.stop()

    [request] = hook.requests
    assert request["signed"] and request["fresh"]
    body = request["body"]
    assert body["alert_id"] == request["headers"]["X-Trauma-Node-Alert-Id"]
    assert body["triggers"] == ["high_risk", "active_extravasation"]
    assert (body["study_instance_uid"], body["accession_number"]) == (study_uid, ACCESSION)
    assert body["risk_tier"] == "high" and body["volumes_ml"]["active_extravasation"] > 0
    assert body["research_use"].startswith("RESEARCH USE ONLY")

    [transaction] = server.requests
    Bundle.model_validate(transaction["bundle"])
    resources = list(server.resources.values())
    report = next(r for r in resources if r["resourceType"] == "DiagnosticReport")
    assert "subject" not in report and report["status"] == "preliminary"
    assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{study_uid}"
    assert report["basedOn"][0]["identifier"]["value"] == ACCESSION
    volumes = {r["code"]["coding"][0]["code"]: r["valueQuantity"] for r in resources
               if "valueQuantity" in r}
    assert volumes["hemorrhage-volume"]["value"] == pytest.approx(
        findings_dict("bleed")["volumes_ml"]["hemorrhage"], abs=0.05)
    assert {(q["system"], q["code"]) for q in volumes.values()} == {
        ("http://unitsofmeasure.org", "mL")}
    [communication] = [r for r in resources if r["resourceType"] == "Communication"]
    assert "RESEARCH USE ONLY" in communication["payload"][0]["contentString"]

    [message] = ris.messages
    oru = message["message"]
    assert str(oru.segment("MSH")[9]) == "ORU^R01^ORU_R01"
    assert str(oru.segment("OBR")[18]) == ACCESSION and str(oru.segment("OBR")[25]) == "P"
    with pytest.raises(KeyError):
        oru.segment("PID")  # no patient identifiers
    units = {str(obx[3][0][0]): str(obx[6]) for obx in oru.segments("OBX") if str(obx[2]) == "NM"}
    assert units == {"hemorrhage-volume": "mL^mL^UCUM",
                     "active-extravasation-volume": "mL^mL^UCUM"}
    for raw in (request["raw"], transaction["raw"], message["text"].encode()):
        assert b"PHANTOM" not in raw  # neither the patient's name nor ID


def test_a_study_pages_each_receiver_once_unless_a_later_series_meets_a_new_trigger(node_db):
    settings, index, finish = node_db
    hook = WebhookReceiver().start()
    try:
        settings.alerts = [webhook(hook)]
        node = Alerts(settings, index, "node-1")
        high_only = {**findings_dict("bleed"), "volumes_ml": {
            **findings_dict("bleed")["volumes_ml"], "active_extravasation": 0.0}}
        study_uid = finish("bleed", result=high_only)  # the arterial phase, say
        finish("bleed", result=high_only, study_uid=study_uid)  # the venous phase
        assert node.check_finished() == 1
        finish("bleed", study_uid=study_uid)  # a later series shows extravasation too
        assert node.check_finished() == 1
        send_until(node, lambda: all(a.state == "sent" for a in alerts(index)))
    finally:
        hook.stop()
    assert [r["body"]["triggers"] for r in hook.requests] == [
        ["high_risk"], ["high_risk", "active_extravasation"]]


def test_a_receiver_down_gets_the_alert_once_when_it_comes_back(node_db):
    settings, index, finish = node_db
    hook, ris = WebhookReceiver(), MllpListener()  # made, not started: refused
    settings.alerts = [webhook(hook), mllp(ris)]
    node = Alerts(settings, index, "node-1")
    finish("bleed")
    node.check_finished()
    node.send_due()
    assert [(a.state, a.attempts) for a in alerts(index)] == [("pending", 1)] * 2
    assert "unreachable" in alerts(index)[0].last_error
    hook.start(), ris.start()
    try:
        hook.statuses = [503]  # up, but not ready yet: tried again
        ris.codes = ["AE"]  # an application error may pass: tried again
        send_until(node, lambda: all(a.state == "sent" for a in alerts(index)))
    finally:
        hook.stop(), ris.stop()
    assert [r["status"] for r in hook.requests] == [503, 200]
    assert [m["code"] for m in ris.messages] == ["AE", "AA"]
    # The same alert each time: a receiver tells a repeat by its id.
    assert len({r["body"]["alert_id"] for r in hook.requests}) == 1
    assert len({str(m["message"].segment("MSH")[10]) for m in ris.messages}) == 1


def test_an_hl7_message_taken_without_an_ack_is_sent_again_with_the_same_control_id(node_db):
    ris = MllpListener().start()
    ris.codes = [""]  # the first is taken, the connection closed with no ACK
    try:
        node, _ = alert_one_bleed(node_db, mllp(ris))
    finally:
        ris.stop()
    assert [m["code"] for m in ris.messages] == ["", "AA"]
    assert len({str(m["message"].segment("MSH")[10]) for m in ris.messages}) == 1
    assert alerts(node.index)[0].attempts == 2


def test_a_permanent_refusal_is_a_dead_letter_with_its_reason(node_db):
    settings, index, finish = node_db
    hook, server, ris = (WebhookReceiver(status=401).start(), FhirReceiver(status=422).start(),
                         MllpListener(code="AR").start())
    try:
        settings.alerts = [webhook(hook), fhir(server), mllp(ris)]
        node = Alerts(settings, index, "node-1")
        finish("bleed")
        node.check_finished()
        send_until(node, lambda: all(a.state == "dead" for a in alerts(index)))
        assert {a.receiver: (a.attempts, a.last_error) for a in alerts(index)} == {
            "hook": (1, "HTTP 401 Unauthorized"), "fhir": (1, "HTTP 422 Unprocessable Entity"),
            "ris": (1, "HL7 AR: rejected")}
        # What `trauma-node status` shows; `trauma-node retry` sends them again.
        [line] = [line for line in status.table(index).splitlines() if " ris " in line]
        assert line.split()[1:6:3] == ["alert", "dead"] and line.endswith("HL7 AR: rejected")
        ris.code = "AA"
        assert outbox.retry_dead(index, AlertItem) == 3
        send_until(node, lambda: alerts(index)[2].state == "sent")
    finally:
        hook.stop(), server.stop(), ris.stop()
    assert [m["code"] for m in ris.messages] == ["AR", "AA"]


def test_an_attempt_cut_off_is_sent_again_with_the_same_id_and_kept_once(node_db):
    server = FhirReceiver().start()
    try:
        node, _ = alert_one_bleed(node_db, fhir(server))
        index = node.index
        # As if the node had crashed after sending, before recording the answer.
        with index.engine.begin() as conn:
            conn.execute(AlertItem.__table__.update().values(
                state="pending", attempt_started_at=time.time() - 60))
        send_until(node, lambda: alerts(index)[0].state == "sent")
    finally:
        server.stop()
    assert len(server.requests) == 2
    assert len(server.resources) == 5  # the server created each resource once


def test_an_https_webhook_is_verified_against_its_ca_certificates(node_db, tmp_path):
    from test_tls import make_ca, make_leaf
    settings, index, finish = node_db
    ca_key, ca_cert, ca_path = make_ca(tmp_path, "hospital-ca")
    rogue_key, rogue_cert, rogue_path = make_ca(tmp_path, "rogue-ca")
    hook = WebhookReceiver(tls=make_leaf(tmp_path, "alerts", ca_key, ca_cert)).start()
    try:
        settings.alerts = [webhook(hook, ca_certificates=str(rogue_path))]
        settings.alerts[0].allow_insecure_http = False
        node = Alerts(settings, index, "node-1")
        finish("bleed")
        node.check_finished()
        node.send_due()
        [refused] = alerts(index)
        assert refused.state == "pending" and "CERTIFICATE_VERIFY_FAILED" in refused.last_error
        assert hook.requests == []  # nothing went to a server the CA did not sign
        node.receivers["hook"].ca_certificates = str(ca_path)
        send_until(node, lambda: alerts(index)[0].state == "sent")
    finally:
        hook.stop()
    assert len(hook.requests) == 1 and hook.requests[0]["signed"]


def test_retention_removes_a_studys_alerts_with_it(node_db):
    settings, index, _ = node_db
    ris = MllpListener().start()
    try:
        _, study_uid = alert_one_bleed(node_db, mllp(ris))
    finally:
        ris.stop()
    later = dt.datetime.utcnow() + dt.timedelta(days=settings.storage.retention_days + 1)
    assert Retention(settings, index).run_once(now=later).studies == [study_uid]
    with index.engine.connect() as conn:
        assert [conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()
                for table in ("alerts", "alert_checks")] == [0, 0]


@pytest.mark.parametrize("table, problem", [
    ('kind = "pager"\nurl = "https://x/hook"', "alerts[0].kind: 'pager' is not one of webhook, fhir, hl7"),
    ('kind = "webhook"\nurl = "https://x/hook"', "alerts[0]: a webhook needs secret_file or secret_env"),
    ('kind = "webhook"\nurl = "http://x/hook"\nsecret_env = "HOME"', "alerts[0].url: http:// sends alerts unencrypted"),
    ('kind = "hl7"\nurl = "https://x"', 'alerts[0]: kind = "hl7" needs host and port'),
    ('kind = "fhir"\nurl = "https://x/fhir"\ntriggers = ["moderate"]', "alerts[0].triggers: unknown ['moderate']"),
    ('kind = "fhir"\nurl = "https://x/fhir"\nsecret_file = "/nonexistent"', "alerts[0].secret_file: file not found"),
])
def test_a_bad_alerts_table_is_refused_naming_its_key(tmp_path, table, problem):
    config = tmp_path / "node.toml"
    config.write_text(f'[[alerts]]\nname = "a"\n{table}\n')
    with pytest.raises(ConfigError) as error:
        load_settings(config, env={})
    assert any(p.startswith(problem) for p in error.value.problems), error.value.problems
