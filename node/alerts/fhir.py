"""FHIR R4: the alert as a transaction Bundle of a DiagnosticReport, an Observation per
volume (UCUM mL) and one for the risk tier, and a Communication about the report, each
validated with fhir.resources before it is sent.

fhir.resources 8 models FHIR R4B (4.3), whose DiagnosticReport, Observation, Communication
and Bundle are R4's (4.0.1) unchanged, so what validates here is valid R4.

Subject: none. R4 makes `subject` optional, and a Patient reference would need the
patient's ID, which the node does not send. The report names its study instead, by an
identifier-only reference to the ImagingStudy (system urn:dicom:uid, the Study Instance
UID), and its order by an identifier-only reference to the ServiceRequest (the accession
number, type ACSN) when the images have one; the server finds the patient from either.

Once: every resource is a conditional create (ifNoneExist) on its identifier, derived
from the alert id, so a transaction sent again after a cut-off attempt creates nothing new.
2xx: delivered; 408, 425, 429, 5xx or no answer: retried; any other 4xx: a dead letter.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from node.config import AlertReceiver
from node.alerts.content import AlertContent
from node.alerts.http_post import post
from node.alerts.secrets import read_secret

ALERT_SYSTEM = "urn:trauma-node:alert"
FINDING_SYSTEM = "urn:trauma-node:finding"
UCUM = "http://unitsofmeasure.org"
PRELIMINARY = "preliminary"  # an AI result for research, not a signed report


def bundle(content: AlertContent) -> dict[str, Any]:
    """The transaction Bundle, as JSON; ValueError (pydantic's) if it is not valid."""
    when = content.result_at.isoformat(timespec="seconds")
    report_url = _urn(content, "report")
    observations = [
        _volume(content, "hemorrhage-volume", "Hemorrhage volume", content.hemorrhage_ml, when),
        _volume(content, "active-extravasation-volume", "Active extravasation volume",
                content.active_extravasation_ml, when),
        _observation(content, "risk-tier", "Risk tier", when,
                     valueCodeableConcept={"text": content.risk_tier}),
    ]
    report = {
        "resourceType": "DiagnosticReport",
        "identifier": [_identifier(content, "report")],
        "status": PRELIMINARY,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                  "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4",
                             "display": "Diagnostic imaging study"}],
                 "text": "Trauma CT critical result (research use only)"},
        "effectiveDateTime": when,
        "issued": when,
        "imagingStudy": [{"type": "ImagingStudy", "identifier": {
            "system": "urn:dicom:uid", "value": f"urn:oid:{content.study_uid}"}}],
        "result": [{"reference": url} for url, _ in observations],
        "conclusion": content.summary(),
    }
    if content.accession_number:
        report["basedOn"] = [{"type": "ServiceRequest", "identifier": {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                 "code": "ACSN"}]}, "value": content.accession_number}}]
    communication = {
        "resourceType": "Communication",
        "identifier": [_identifier(content, "communication")],
        "status": "completed",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/communication-category",
            "code": "alert"}]}],
        "priority": "stat",
        "sent": when,
        "about": [{"reference": report_url}],
        "payload": [{"contentString": content.summary()}],
    }
    entries = [*observations, (report_url, report), (_urn(content, "communication"),
                                                     communication)]
    data = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": url, "resource": resource,
         "request": {"method": "POST", "url": resource["resourceType"],
                     "ifNoneExist": f"identifier={ALERT_SYSTEM}|"
                                    f"{resource['identifier'][0]['value']}"}}
        for url, resource in entries]}
    return json.loads(Bundle.model_validate(data).model_dump_json(exclude_none=True))


def send(content: AlertContent, receiver: AlertReceiver) -> None:
    token = read_secret(receiver)
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    post(receiver, json.dumps(bundle(content)).encode(), headers)


def _volume(content: AlertContent, code: str, display: str, ml: float, when: str):
    return _observation(content, code, display, when, valueQuantity={
        "value": ml, "unit": "mL", "system": UCUM, "code": "mL"})


def _observation(content: AlertContent, code: str, display: str, when: str, **value):
    return _urn(content, code), {
        "resourceType": "Observation",
        "identifier": [_identifier(content, code)],
        "status": PRELIMINARY,
        "code": {"coding": [{"system": FINDING_SYSTEM, "code": code, "display": display}],
                 "text": display},
        "effectiveDateTime": when,
        "note": [{"text": content.research_use}],
        **value,
    }


def _identifier(content: AlertContent, part: str) -> dict[str, str]:
    return {"system": ALERT_SYSTEM, "value": f"{content.alert_id}/{part}"}


def _urn(content: AlertContent, part: str) -> str:
    """A transaction's local name for a resource, stable for the alert."""
    return f"urn:uuid:{uuid.uuid5(uuid.UUID(content.alert_id), part)}"
