"""HL7 v2.5.1 ORU^R01 over MLLP: the alert as a preliminary result, its ACK awaited.

No PID segment (the PATIENT group of ORU_R01 is optional): the node sends no patient
identifiers. The receiver files the result by OBR-18, the accession number (IHE Radiology's
place for it) when the images have one, and by the Study Instance UID in an OBX. OBR-3
(filler order number) and MSH-10 (message control id) carry the alert id, MSH-10 in the 20
characters v2.5.1 allows, the same at every attempt so a receiver drops a repeat.

MLLP frames a message as 0x0B <message> 0x1C 0x0D. MSA-1 of the ACK: AA (or CA):
delivered. AE (application error; CE): retried with backoff, since a receiver's error may
pass, and a dead letter after delivery.max_attempts. AR (application reject; CR): the
receiver does not take this message (its type, version or processing id): a dead letter at
once. No ACK within timeout_s: retried, in doubt (it may have arrived).
"""

from __future__ import annotations

import datetime as dt
import socket

import hl7

from node.config import AlertReceiver
from node.alerts.content import AlertContent
from node.alerts.outcome import AlertNotDelivered

START, END = b"\x0b", b"\x1c\x0d"
SENDING_APPLICATION = "TRAUMA_NODE"
LOCAL_CODES = "99TRN"  # HL7's local coding system prefix 99zzz
MAX_ACK_BYTES = 1 << 20


def control_id(content: AlertContent) -> str:
    return content.alert_id.replace("-", "")[:20]


def message(content: AlertContent, receiver: AlertReceiver, now: dt.datetime) -> str:
    stamp = now.strftime("%Y%m%d%H%M%S")
    result_at = content.result_at.strftime("%Y%m%d%H%M%S")
    obr = ["OBR"] + [""] * 25  # OBR-n is obr[n]
    obr[1], obr[3] = "1", f"{_esc(content.alert_id)}^{SENDING_APPLICATION}"
    obr[4] = "18748-4^Diagnostic imaging study^LN"
    obr[7] = obr[22] = result_at  # observation, and results reported, date/time
    obr[18] = _esc(content.accession_number or "")
    obr[25] = "P"  # preliminary
    observations = [
        ("NM", "hemorrhage-volume^Hemorrhage volume", f"{content.hemorrhage_ml:.1f}", "mL^mL^UCUM"),
        ("NM", "active-extravasation-volume^Active extravasation volume",
         f"{content.active_extravasation_ml:.1f}", "mL^mL^UCUM"),
        ("ST", "risk-tier^Risk tier", content.risk_tier, ""),
        ("ST", "triggers^Alert triggers", "~".join(content.triggers), ""),
        ("ST", "110180^Study Instance UID^DCM", content.study_uid, ""),
        ("TX", "summary^Summary", _esc(content.summary()), ""),
    ]
    segments = [
        "|".join(["MSH", "^~\\&", SENDING_APPLICATION, _esc(content.node),
                  _esc(receiver.receiving_application), _esc(receiver.receiving_facility),
                  stamp, "", "ORU^R01^ORU_R01", control_id(content), "P", "2.5.1"]),
        "|".join(obr),
    ]
    for i, (kind, code, value, units) in enumerate(observations, start=1):
        if not code.endswith("^DCM"):
            code += f"^{LOCAL_CODES}"
        segments.append("|".join(["OBX", str(i), kind, code, "", value, units, "", "", "", "",
                                  "P", "", "", result_at]))
    segments.append(f"NTE|1|L|{_esc(content.research_use)}")
    return "\r".join(segments) + "\r"


def send(content: AlertContent, receiver: AlertReceiver) -> None:
    framed = START + message(content, receiver, dt.datetime.now(dt.timezone.utc)).encode() + END
    sent = False
    try:
        with socket.create_connection((receiver.host, receiver.port),
                                      timeout=receiver.timeout_s) as conn:
            conn.sendall(framed)
            sent = True
            ack = _read_frame(conn)
    except OSError as exc:  # refused, reset, or no ACK within timeout_s
        raise AlertNotDelivered(f"MLLP {receiver.host}:{receiver.port}: {exc}",
                                answered=not sent) from None
    _check_ack(ack, control_id(content))


def _read_frame(conn: socket.socket) -> str:
    data = b""
    while END not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a whole ACK arrived")
        data += chunk
        if len(data) > MAX_ACK_BYTES:
            raise ConnectionError("an ACK larger than 1 MiB")
    return data[data.find(START) + 1:data.find(END)].decode(errors="replace")


def _check_ack(ack: str, expected_id: str) -> None:
    try:
        msa = hl7.parse(ack).segment("MSA")
        code, acked_id = str(msa[1]), str(msa[2])
    except (KeyError, IndexError, hl7.ParseException) as exc:
        raise AlertNotDelivered(f"not an HL7 ACK ({exc})", answered=False) from None
    if acked_id != expected_id:
        raise AlertNotDelivered(f"ACK for message {acked_id!r}, not {expected_id!r}",
                                answered=False)
    if code in ("AA", "CA"):
        return
    text = str(msa[3]) if len(msa) > 3 else ""
    raise AlertNotDelivered(f"HL7 {code}" + (f": {text}" if text else ""),
                            permanent=code in ("AR", "CR"))


def _esc(text: str) -> str:
    """HL7 escapes for the delimiters |^~\\& and line breaks in a text value."""
    out = text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
    out = out.replace("~", "\\R\\").replace("&", "\\T\\")
    return out.replace("\r", "\\X0D\\").replace("\n", "\\X0A\\")
