"""The audit trail: who did what with which study, for the site's security officer.

Each event (node.audit.messages says which, and why that EventID) becomes one DICOM
PS3.15 A.5 XML message on one line of the local audit file, `[audit] file` (default
DATA_DIR/audit/audit.log), always, and, with `[audit] syslog` set, is queued for a syslog
collector (node.audit.syslog), which never holds up the caller. The file is only ever
appended to; beyond `[audit] max_file_mb` it is renamed to audit.log.<UTC time> and a new
one begun, so no line once written is rewritten (nor deleted: the site archives them).

Patients: no names or IDs unless `[audit] include_patient = true`; then the Patient
participant object is read from one stored file of the study (never from a log).
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import logging
import os
import socket
import ssl
import threading
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from pydicom import dcmread

from node.audit import messages as am
from node.audit.syslog import SyslogSender, parse_collector
from node.config import Settings
from node.metrics import AUDIT_MESSAGES, Counters

log = logging.getLogger("trauma_node.audit")

CONFIG_STATE = "config.json"  # the last start's configuration hashes, beside the file
# Which kind of configuration each part of the settings is (A.5.3.11 EventTypeCode).
_NETWORK = {"node", "network", "peers", "destinations"}
_SECURITY = {"tls", "api", "audit"}


def config_hashes(settings: Settings) -> dict[str, str]:
    """sha256 of the effective configuration, per top-level part and in all ("*")."""
    parts = {name: json.dumps(value, sort_keys=True, default=str)
             for name, value in asdict(settings).items()}
    hashes = {name: hashlib.sha256(text.encode()).hexdigest() for name, text in parts.items()}
    hashes["*"] = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
    return hashes


def config_kinds(changed: list[str]) -> list[am.Code]:
    kinds = []
    if set(changed) & _NETWORK:
        kinds.append(am.NETWORK_CONFIGURATION)
    if set(changed) & _SECURITY:
        kinds.append(am.SECURITY_CONFIGURATION)
    if set(changed) - _NETWORK - _SECURITY:
        kinds.append(am.SOFTWARE_CONFIGURATION)
    return kinds


def client_context(settings: Settings) -> ssl.SSLContext:
    """TLS to the collector: verified against audit.ca_certificates (else tls's), our
    certificate presented when we have one (ATNA asks for mutual authentication)."""
    a, t = settings.audit, settings.tls
    context = ssl.create_default_context(cafile=a.ca_certificates or t.ca_certificates or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    certificate, key = a.certificate or t.certificate, a.private_key or t.private_key
    if certificate and key:
        context.load_cert_chain(certificate, key)
    return context


def patient_of_file(path: Path) -> tuple[str, str] | None:
    """(Patient ID, Patient's Name) from a DICOM file's header, None when it has none."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["PatientID", "PatientName"])
    except Exception:  # noqa: BLE001 - an audit message goes out without the patient
        return None
    patient_id = str(ds.get("PatientID", "") or "")
    return (patient_id, str(ds.get("PatientName", "") or "")) if patient_id else None


class _AuditFile:
    """Append-only, one message a line, renamed aside past max_bytes."""

    def __init__(self, path: Path, max_bytes: int):
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, line: str) -> None:
        data = (line + "\n").encode("utf-8")
        with self._lock:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(data) > self.max_bytes:
                self._rotate()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    def _rotate(self) -> None:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        target = self.path.with_name(f"{self.path.name}.{stamp}")
        n = 1
        while target.exists():  # never over an older one
            target = self.path.with_name(f"{self.path.name}.{stamp}-{n}")
            n += 1
        os.rename(self.path, target)


class AuditTrail:
    """What the node's parts call; each call makes one message. Disabled: does nothing."""

    def __init__(self, settings: Settings, counters: Counters | None = None,
                 patient_lookup: Callable[[str], tuple[str, str] | None] | None = None):
        self.settings = settings
        a = settings.audit
        self.enabled = a.enabled
        self.counters = counters if counters is not None else Counters()
        self.ae_title = settings.node.ae_title
        self.hostname = socket.gethostname()
        self.include_patient = a.include_patient
        # study UID -> (Patient ID, name): set by the node (node.service) when it may be used
        self.patient_lookup = patient_lookup
        self.file = _AuditFile(self.file_path(settings), a.max_file_mb * 2**20)
        self.syslog: SyslogSender | None = None
        if self.enabled and a.syslog:
            collector = parse_collector(a.syslog)
            self.syslog = SyslogSender(
                collector, client_context(settings) if collector.scheme == "tls" else None,
                a.syslog_queue, lambda outcome: self.counters.add(AUDIT_MESSAGES, outcome),
                self.hostname)

    @staticmethod
    def file_path(settings: Settings) -> Path:
        configured = settings.audit.file
        return (Path(configured).expanduser() if configured
                else settings.data_dir / "audit" / "audit.log")

    def start(self) -> None:
        if self.syslog is not None:
            self.syslog.start()

    def close(self, timeout_s: float = 2.0) -> None:
        if self.syslog is not None:
            self.syslog.stop(timeout_s)

    def queued(self) -> int:
        return self.syslog.queued() if self.syslog is not None else 0

    def emit(self, message: am.AuditMessage) -> None:
        """Write one message; never raises (a failure is logged: the caller goes on)."""
        if not self.enabled:
            return
        try:
            line = message.xml(self.hostname, self.settings.audit.site_id)
            self.file.append(line)
            self.counters.add(AUDIT_MESSAGES, "written")
        except Exception:  # noqa: BLE001 - auditing never stops receiving or serving
            log.exception("audit: cannot write %s to %s", message.event_id[2], self.file.path)
            self.counters.add(AUDIT_MESSAGES, "failed")
            return
        if self.syslog is not None:
            self.syslog.submit(line)

    # -- the participants -----------------------------------------------------------
    def _us(self, requestor: bool, role: am.Code | None, ae_title: str | None = None
            ) -> am.Participant:
        return am.application_entity(ae_title or self.ae_title, requestor, role, self.hostname)

    def _study(self, study_uid: str, sop_classes: dict[str, int] | None = None
               ) -> list[am.ParticipantObject]:
        objects = [am.study(study_uid, sop_classes)]
        if self.include_patient and self.patient_lookup is not None:
            try:
                found = self.patient_lookup(study_uid)
            except Exception:  # noqa: BLE001 - the message goes out without the patient
                found = None
            if found:
                objects.append(am.patient(*found))
        return objects

    # -- the events -----------------------------------------------------------------
    def application(self, started: bool) -> None:
        self.emit(am.AuditMessage(
            am.APPLICATION_ACTIVITY, "E",
            type_codes=[am.APPLICATION_START if started else am.APPLICATION_STOP],
            participants=[self._us(False, am.APPLICATION), self._launcher()]))

    def _launcher(self) -> am.Participant:
        try:
            user = getpass.getuser()
        except Exception:  # noqa: BLE001 - no user name for this uid
            user = str(os.getuid())
        return am.Participant(user, True, am.APPLICATION_LAUNCHER)

    def node_refused(self, host: str, calling_ae: str, reason: str) -> None:
        """An association (or connection) refused for who the peer is."""
        peer = am.application_entity(calling_ae, True, None, host)
        peer.user_id = calling_ae or host
        self.emit(am.AuditMessage(
            am.SECURITY_ALERT, "E", am.MINOR_FAILURE, [am.NODE_AUTHENTICATION],
            [self._us(False, None), peer],
            [am.alert_subject(host, am.NODE_ID, reason)], outcome_description=reason))

    def user_refused(self, host: str, reason: str) -> None:
        """An HTTP API request without a valid token."""
        self.emit(am.AuditMessage(
            am.USER_AUTHENTICATION, "E", am.MINOR_FAILURE, [am.LOGIN],
            [am.Participant("unauthenticated", True, access_point=host),
             self._us(False, am.APPLICATION)], outcome_description=reason))

    def begin_receiving(self, study_uid: str, calling_ae: str, host: str) -> None:
        self.emit(am.AuditMessage(
            am.BEGIN_TRANSFERRING, "E",
            participants=[am.application_entity(calling_ae, True, am.SOURCE, host),
                          self._us(False, am.DESTINATION)],
            objects=self._study(study_uid)))

    def received(self, study_uid: str, sop_classes: Counter[str] | dict[str, int],
                 calling_ae: str, host: str, complete: bool, how: str) -> None:
        """The instances of one study one association brought (at its end)."""
        self.emit(am.AuditMessage(
            am.INSTANCES_TRANSFERRED, "C", am.SUCCESS if complete else am.MINOR_FAILURE,
            participants=[am.application_entity(calling_ae, True, am.SOURCE, host),
                          self._us(False, am.DESTINATION)],
            objects=self._study(study_uid, dict(sop_classes)),
            outcome_description="" if complete else f"association {how}"))

    def sent(self, study_uid: str, sop_classes: dict[str, int], calling_ae: str,
             destination_ae: str, destination_host: str, failed: int = 0,
             error: str = "") -> None:
        """Results of one study sent to one destination in one delivery pass. destination_ae:
        its AE title, or for a DICOMweb destination its URL."""
        outcome = (am.SUCCESS if not failed else
                   am.MINOR_FAILURE if sop_classes else am.SERIOUS_FAILURE)
        destination = (am.Participant(destination_ae, False, am.DESTINATION,
                                      access_point=destination_host)
                       if "://" in destination_ae else
                       am.application_entity(destination_ae, False, am.DESTINATION,
                                             destination_host))
        self.emit(am.AuditMessage(
            am.INSTANCES_TRANSFERRED, "R", outcome,
            participants=[self._us(True, am.SOURCE, calling_ae), destination],
            objects=self._study(study_uid, sop_classes),
            outcome_description=f"{failed} not sent: {error}" if failed else ""))

    def accessed(self, study_uid: str, user: str, host: str, what: str,
                 found: bool = True) -> None:
        """A study read through the HTTP API by the holder of the token named user."""
        self.emit(am.AuditMessage(
            am.INSTANCES_ACCESSED, "R", am.SUCCESS if found else am.MINOR_FAILURE,
            participants=[am.Participant(user, True, access_point=host, user_name=what),
                          self._us(False, am.APPLICATION)],
            objects=self._study(study_uid) if found else [am.study(study_uid)],
            outcome_description="" if found else "unknown study"))

    def verdict(self, study_uid: str, user: str, host: str, finding_key: str, verdict: str,
                supersedes: bool) -> None:
        """A reader's verdict on one finding of a study (Patient Record: the study's record
        gains the reader's assessment); the note is never in the message."""
        study = am.study(study_uid)
        study.details = {"finding": finding_key[:64], "verdict": verdict[:16]}
        objects = [study, *self._study(study_uid)[1:]]
        self.emit(am.AuditMessage(
            am.PATIENT_RECORD, "U" if supersedes else "C",
            participants=[am.Participant(user, True, access_point=host,
                                         user_name=f"verdict {finding_key[:64]}: {verdict[:16]}"),
                          self._us(False, am.APPLICATION)],
            objects=objects))

    def exported(self, study_uids: list[str], user: str, host: str, what: str) -> None:
        """Verdicts of these studies taken out of the node (JSON or DICOM) by user."""
        self.emit(am.AuditMessage(
            am.EXPORT, "R",
            participants=[am.Participant(user, True, am.DESTINATION, access_point=host,
                                         user_name=what[:128]),
                          self._us(False, am.SOURCE)],
            objects=[am.study(uid) for uid in study_uids]))

    def account_changed(self, name: str, what: str) -> None:
        """A reader account added, disabled, enabled or given a new token (CLI)."""
        self.emit(am.AuditMessage(
            am.SECURITY_ALERT, "E", am.SUCCESS, [am.USER_SECURITY_ATTRIBUTES_CHANGED],
            [self._launcher(), self._us(False, am.APPLICATION)],
            [am.account(name, what)]))

    def check_configuration(self, settings: Settings, config_path: str = "") -> list[str]:
        """Compare the effective configuration's hashes with the last start's; a change
        makes a Security Alert. Returns the parts that changed (none at a first start)."""
        if not self.enabled:
            return []
        state = self.file.path.parent / CONFIG_STATE
        now = config_hashes(settings)
        try:
            before = json.loads(state.read_text())
        except (OSError, ValueError):
            before = None
        changed: list[str] = []
        if isinstance(before, dict) and before.get("*") != now["*"]:
            changed = sorted(k for k in set(now) | set(before)
                             if k != "*" and before.get(k) != now.get(k))
            subject = Path(config_path).resolve().as_uri() if config_path else "configuration"
            description = (f"effective configuration changed ({', '.join(changed)}): sha256 "
                           f"{str(before.get('*'))[:16]} -> {now['*'][:16]}")
            self.emit(am.AuditMessage(
                am.SECURITY_ALERT, "E", am.SUCCESS, config_kinds(changed),
                [self._us(False, am.APPLICATION), self._launcher()],
                [am.alert_subject(subject, am.URI, description)]))
        if before != now:
            tmp = state.with_suffix(".tmp")
            tmp.write_text(json.dumps(now, indent=1, sort_keys=True))
            os.replace(tmp, state)
        return changed


def study_patient_lookup(index, spool_dir: Path) -> Callable[[str], tuple[str, str] | None]:
    """For include_patient: (Patient ID, name) of a study, from one of its stored files."""
    from sqlalchemy import select

    from node.store.tables import Instance, Series, Study

    def lookup(study_uid: str) -> tuple[str, str] | None:
        with index.session() as session:
            path = session.execute(
                select(Instance.path).join(Series, Instance.series_id == Series.id)
                .join(Study, Series.study_id == Study.id)
                .where(Study.study_uid == study_uid).limit(1)).scalar()
        return patient_of_file(spool_dir / path) if path else None

    return lookup
