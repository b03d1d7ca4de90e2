"""Audit messages in the form IHE ATNA uses: DICOM PS3.15 Annex A.5, XML per the DICOM
audit message schema (A.5.1), one message a line.

Which event the node reports for what (PS3.15 A.5.3; codes from PS3.16 CID 400-404):

| what happened | EventID | EventTypeCode | action |
| --- | --- | --- | --- |
| `serve` started / stopped | 110100 Application Activity | 110120 Application Start / 110121 Application Stop | E |
| an association refused for who the peer is (called or calling AE title, TLS, an AE title that cannot be one) | 110113 Security Alert | 110126 Node Authentication | E, outcome 4 |
| an API request without a valid token | 110114 User Authentication | 110122 Login | E, outcome 4 |
| the first instance of a study in an association | 110102 Begin Transferring DICOM Instances | | E |
| the instances of a study received in an association, at its end | 110104 DICOM Instances Transferred | | C |
| results of a study sent to a destination (one delivery pass) | 110104 DICOM Instances Transferred | | R |
| a study read through the HTTP API (`/studies/{uid}`...) | 110103 DICOM Instances Accessed | | R |
| the effective configuration differs from the last start's | 110113 Security Alert | 110128 Network / 110129 Security / 110131 Software Configuration | E |
| a reader's verdict on a finding (node.store.verdicts) | 110110 Patient Record | | C (first), U (supersedes one) |
| verdicts exported (JSON, the verdict SR) | 110106 Export | | R |
| a reader account added, disabled, enabled or its token rotated (`trauma-node users`) | 110113 Security Alert | 110137 User Security Attributes Changed | E |

Refusals for capacity (disk low, association limit) or of connections that never sent a
request are not about identity: they are logged and counted in /metrics, not audited.
A Security Alert for node authentication, not User Authentication, which A.5.3.13 keeps
for a user logging on (the API's tokens). Patients: a study is identified by its Study
Instance UID (ParticipantObjectIDTypeCode 110180); the Patient participant object that
A.5.3 asks for is left out unless the site sets `[audit] include_patient = true`.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

DCM, RFC3881 = "DCM", "RFC-3881"

# Outcome indicators (A.5.1): success, minor failure, serious failure.
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = "0", "4", "8"

# EventID (CID 400) and EventTypeCode (CID 401).
APPLICATION_ACTIVITY = ("110100", DCM, "Application Activity")
EXPORT = ("110106", DCM, "Export")
PATIENT_RECORD = ("110110", DCM, "Patient Record")
USER_SECURITY_ATTRIBUTES_CHANGED = ("110137", DCM, "User Security Attributes Changed")
BEGIN_TRANSFERRING = ("110102", DCM, "Begin Transferring DICOM Instances")
INSTANCES_ACCESSED = ("110103", DCM, "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = ("110104", DCM, "DICOM Instances Transferred")
SECURITY_ALERT = ("110113", DCM, "Security Alert")
USER_AUTHENTICATION = ("110114", DCM, "User Authentication")
APPLICATION_START = ("110120", DCM, "Application Start")
APPLICATION_STOP = ("110121", DCM, "Application Stop")
LOGIN = ("110122", DCM, "Login")
NODE_AUTHENTICATION = ("110126", DCM, "Node Authentication")
NETWORK_CONFIGURATION = ("110128", DCM, "Network Configuration")
SECURITY_CONFIGURATION = ("110129", DCM, "Security Configuration")
SOFTWARE_CONFIGURATION = ("110131", DCM, "Software Configuration")

# RoleIDCode (CID 402).
APPLICATION = ("110150", DCM, "Application")
APPLICATION_LAUNCHER = ("110151", DCM, "Application Launcher")
DESTINATION = ("110152", DCM, "Destination Role ID")
SOURCE = ("110153", DCM, "Source Role ID")

# ParticipantObjectIDTypeCode (CID 404 and RFC 3881).
STUDY_INSTANCE_UID = ("110180", DCM, "Study Instance UID")
NODE_ID = ("110182", DCM, "Node ID")
PATIENT_NUMBER = ("2", RFC3881, "Patient Number")
URI = ("12", RFC3881, "URI")
USER_IDENTIFIER = ("11", RFC3881, "User Identifier")

# AuditSourceTypeCode 4: application server process tier in a multi-tier system.
AUDIT_SOURCE_TYPE = ("4", DCM, "Application Server Process Tier in a Multi-tier System")

Code = tuple[str, str, str]
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _clean(value: object) -> str:
    """Text for an attribute: no characters XML 1.0 cannot hold."""
    return _CONTROL.sub("?", str(value))


def _code(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code[0], "codeSystemName": code[1],
                                       "originalText": code[2]})


@dataclass
class Participant:
    """ActiveParticipant: a person or process (A.5.2.1)."""
    user_id: str
    requestor: bool
    role: Code | None = None
    alternative_user_id: str = ""  # "AETITLES=..." for a DICOM application entity
    user_name: str = ""
    access_point: str = ""  # an IP address (type 2) or host name (type 1)

    def element(self, parent: ET.Element) -> None:
        attrs = {"UserID": _clean(self.user_id or "unknown"),
                 "UserIsRequestor": "true" if self.requestor else "false"}
        if self.alternative_user_id:
            attrs["AlternativeUserID"] = _clean(self.alternative_user_id)
        if self.user_name:
            attrs["UserName"] = _clean(self.user_name)
        if self.access_point:
            attrs["NetworkAccessPointID"] = _clean(self.access_point)
            attrs["NetworkAccessPointTypeCode"] = "2" if _is_ip(self.access_point) else "1"
        el = ET.SubElement(parent, "ActiveParticipant", attrs)
        if self.role is not None:
            _code(el, "RoleIDCode", self.role)


@dataclass
class ParticipantObject:
    """ParticipantObjectIdentification (A.5.2.2 ff.)."""
    object_id: str
    type_code: str  # 1 person, 2 system object
    role: str  # 1 patient, 3 report, 13 security resource
    id_type: Code
    name: str = ""
    details: dict[str, str] = field(default_factory=dict)  # ParticipantObjectDetail
    sop_classes: dict[str, int] = field(default_factory=dict)  # SOP Class UID -> instances

    def element(self, parent: ET.Element) -> None:
        el = ET.SubElement(parent, "ParticipantObjectIdentification", {
            "ParticipantObjectID": _clean(self.object_id),
            "ParticipantObjectTypeCode": self.type_code,
            "ParticipantObjectTypeCodeRole": self.role})
        _code(el, "ParticipantObjectIDTypeCode", self.id_type)
        if self.name:
            ET.SubElement(el, "ParticipantObjectName").text = _clean(self.name)
        for kind, value in self.details.items():
            ET.SubElement(el, "ParticipantObjectDetail", {
                "type": kind, "value": base64.b64encode(value.encode()).decode()})
        for uid, count in sorted(self.sop_classes.items()):
            ET.SubElement(el, "SOPClass", {"UID": _clean(uid), "NumberOfInstances": str(count)})


def study(uid: str, sop_classes: dict[str, int] | None = None) -> ParticipantObject:
    return ParticipantObject(uid, "2", "3", STUDY_INSTANCE_UID, sop_classes=dict(sop_classes or {}))


def patient(patient_id: str, name: str = "") -> ParticipantObject:
    return ParticipantObject(patient_id, "1", "1", PATIENT_NUMBER, name=name)


def alert_subject(object_id: str, id_type: Code, description: str) -> ParticipantObject:
    return ParticipantObject(object_id, "2", "13", id_type,
                             details={"Alert Description": description})


def account(name: str, description: str) -> ParticipantObject:
    """A reader account whose security attributes changed (type person, role 11: Security
    User Entity)."""
    return ParticipantObject(name, "1", "11", USER_IDENTIFIER,
                             details={"Alert Description": description})


def application_entity(ae_title: str, requestor: bool, role: Code | None,
                       access_point: str = "") -> Participant:
    return Participant(ae_title, requestor, role, f"AETITLES={ae_title}" if ae_title else "",
                       access_point=access_point)


@dataclass
class AuditMessage:
    event_id: Code
    action: str  # C R U D E
    outcome: str = SUCCESS
    type_codes: list[Code] = field(default_factory=list)
    participants: list[Participant] = field(default_factory=list)
    objects: list[ParticipantObject] = field(default_factory=list)
    outcome_description: str = ""
    when: dt.datetime | None = None

    def xml(self, source_id: str, site_id: str = "") -> str:
        """The message as one line of XML (no declaration, no line breaks)."""
        root = ET.Element("AuditMessage")
        when = self.when or dt.datetime.now(dt.timezone.utc)
        event = ET.SubElement(root, "EventIdentification", {
            "EventActionCode": self.action,
            "EventDateTime": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "EventOutcomeIndicator": self.outcome})
        _code(event, "EventID", self.event_id)
        for code in self.type_codes:
            _code(event, "EventTypeCode", code)
        if self.outcome_description:
            ET.SubElement(event, "EventOutcomeDescription").text = _clean(
                self.outcome_description)
        for participant in self.participants:
            participant.element(root)
        attrs = {"AuditSourceID": _clean(source_id)}
        if site_id:
            attrs["AuditEnterpriseSiteID"] = _clean(site_id)
        _code(ET.SubElement(root, "AuditSourceIdentification", attrs), "AuditSourceTypeCode",
              AUDIT_SOURCE_TYPE)
        for obj in self.objects:
            obj.element(root)
        # One line: a line break in text as a character reference (in attributes
        # ElementTree writes them so itself).
        return (ET.tostring(root, encoding="unicode")
                .replace("\n", "&#10;").replace("\r", "&#13;"))


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
