"""Critical-result alerts from a running `trauma-node serve`: a bleeding phantom study is
announced to a webhook, a FHIR server and an HL7 receiver on loopback within seconds of its
result, a clean one to nobody; a receiver that is down gets the alert once when it comes
back, and one that refuses it for good leaves a dead letter with the reason."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time

import httpx

from support.alert_receivers import WEBHOOK_SECRET, FhirReceiver, MllpListener, WebhookReceiver
from support.metrics_support import one, scrape
from support.nodes import AUTH, FAST, storescu, wait_for
from support.qa_support import BLEED, CLEAN

PATIENT = (b"PHANTOM^ABDOMEN", b"PHANTOM-0001")  # tests/support/phantom.py


def alerts_config(hook: WebhookReceiver, fhir: FhirReceiver | None, ris: MllpListener) -> str:
    fhir_table = f"""
[[alerts]]
name = "ehr"
kind = "fhir"
url = "{fhir.url}"
allow_insecure_http = true
timeout_s = 2.0
""" if fhir else ""
    return FAST + f"""
[delivery]
base_delay_s = 0.5
max_attempts = 20
[[alerts]]
name = "trauma-team"
kind = "webhook"
url = "{hook.url}"
secret_env = "ALERT_HOOK_SECRET"
allow_insecure_http = true
timeout_s = 2.0
{fhir_table}
[[alerts]]
name = "ris"
kind = "hl7"
host = "127.0.0.1"
port = {ris.port}
timeout_s = 2.0
"""


def finished_jobs(node) -> dict[str, float]:
    """Study UID -> when its job finished (epoch seconds)."""
    with sqlite3.connect(node.data_dir / "index.sqlite") as db:
        rows = db.execute("SELECT studies.study_uid, jobs.finished_at FROM jobs JOIN series ON "
                          "jobs.series_id = series.id JOIN studies ON series.study_id = "
                          "studies.id WHERE jobs.state = 'done'").fetchall()
    return {uid: dt.datetime.fromisoformat(at).replace(tzinfo=dt.timezone.utc).timestamp()
            for uid, at in rows}


def alert_rows(node) -> dict[str, tuple[str, int, str | None]]:
    with sqlite3.connect(node.data_dir / "index.sqlite") as db:
        return {receiver: (state, attempts, error) for receiver, state, attempts, error in
                db.execute("SELECT receiver, state, attempts, last_error FROM alerts")}


def test_a_bleeding_study_is_announced_to_every_receiver_within_seconds(node_factory,
                                                                        phantom_factory):
    bleed, clean = phantom_factory("alerts-bleed", **BLEED), phantom_factory("alerts-clean", **CLEAN)
    hook, fhir, ris = WebhookReceiver().start(), FhirReceiver().start(), MllpListener().start()
    try:
        node = node_factory(alerts_config(hook, fhir, ris),
                            env={"ALERT_HOOK_SECRET": WEBHOOK_SECRET})
        storescu(clean.paths, node.dicom_port)
        storescu(bleed.paths, node.dicom_port)
        finished = wait_for(lambda: len(finished_jobs(node)) == 2 and finished_jobs(node),
                            timeout=180, what="both studies analysed")
        wait_for(lambda: hook.requests and fhir.requests and ris.messages, timeout=10,
                 what="an alert at each receiver")
        time.sleep(2.0)  # time enough for a second alert, or one for the clean study
        with httpx.Client(timeout=10) as client:
            figures = scrape(client, node.url)
            shown = client.get(f"{node.url}/studies/{bleed.spec.study_uid}/deliveries",
                               headers=AUTH).json()["alerts"]
    finally:
        hook.stop(), fhir.stop(), ris.stop()

    [request], [transaction], [message] = hook.requests, fhir.requests, ris.messages
    done_at = finished[bleed.spec.study_uid]
    for at in (request["at"], transaction["at"], message["at"]):
        assert at - done_at < 5.0  # within seconds of the result
    assert request["signed"] and request["body"]["study_instance_uid"] == bleed.spec.study_uid
    assert request["body"]["triggers"] == ["high_risk", "active_extravasation"]
    assert request["body"]["accession_number"] == "ACC0001"
    assert "RESEARCH USE ONLY" in request["body"]["research_use"]
    report = next(r for r in fhir.resources.values() if r["resourceType"] == "DiagnosticReport")
    assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{bleed.spec.study_uid}"
    assert str(message["message"].segment("OBR")[18]) == "ACC0001"
    assert alert_rows(node) == {"trauma-team": ("sent", 1, None), "ehr": ("sent", 1, None),
                                "ris": ("sent", 1, None)}
    assert one(figures, "trauma_node_alert_attempts_total", outcome="sent") == 3
    assert sorted((a["receiver"], a["state"]) for a in shown) == [
        ("ehr", "sent"), ("ris", "sent"), ("trauma-team", "sent")]
    assert {a["alert_id"] for a in shown} == {request["body"]["alert_id"],
                                              str(message["message"].segment("OBR")[3][0][0]),
                                              report["identifier"][0]["value"].split("/")[0]}
    for raw in (request["raw"], transaction["raw"], message["text"].encode(),
                node.log().encode()):
        assert not any(identifier in raw for identifier in PATIENT)


def test_a_receiver_down_gets_the_alert_once_when_back_and_a_refusal_is_a_dead_letter(
        node_factory, phantom_factory):
    bleed = phantom_factory("alerts-bleed", **BLEED)
    hook, ris = WebhookReceiver(), MllpListener(code="AR").start()  # the webhook is down
    try:
        node = node_factory(alerts_config(hook, None, ris),
                            env={"ALERT_HOOK_SECRET": WEBHOOK_SECRET})
        storescu(bleed.paths, node.dicom_port)
        wait_for(lambda: alert_rows(node).get("trauma-team", ("", 0))[1] >= 2, timeout=180,
                 interval=0.2, what="the webhook tried and retried while down")
        assert alert_rows(node)["ris"] == ("dead", 1, "HL7 AR: rejected")
        hook.start()
        wait_for(lambda: alert_rows(node)["trauma-team"][0] == "sent", timeout=30,
                 what="the alert delivered once the webhook is back")
        time.sleep(1.5)  # a second delivery would come within this
    finally:
        hook.stop(), ris.stop()
    assert len(hook.requests) == 1 and hook.requests[0]["signed"]
    assert len(ris.messages) == 1  # a dead letter is not sent again
    assert "HL7 AR" in node.log() and not any(p.decode() in node.log() for p in PATIENT)
