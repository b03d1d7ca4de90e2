"""C-ECHO, C-STORE and C-FIND as an SCU: for admins (`trauma-node echo/send`) and delivery;
the prior study's C-FIND and C-MOVE (node.prior.query) associate through it too."""

from __future__ import annotations

import logging
import ssl
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

# Send files as stored, streamed from disk: no decode, no re-encode, bounded memory.
_config.STORE_SEND_CHUNKED_DATASET = True

log = logging.getLogger("trauma_node.scu")

MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association


class AssociationFailed(RuntimeError):
    pass


class QueryUnanswered(RuntimeError):
    """The destination did not answer a C-FIND: refused, not supported, failed or silent."""


@dataclass
class SendReport:
    sent: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # file -> why
    skipped: dict[str, str] = field(default_factory=dict)  # not DICOM files


# Called with a file before its C-STORE goes out, and with (file, error or None, cut_off)
# once its outcome is known; cut_off: it went out but got no answer, so the destination
# may or may not hold it.
BeforeEach = Callable[[Path], None]
AfterEach = Callable[[Path, "str | None", bool], None]


def client_ae(calling_ae: str, timeout_s: float) -> AE:
    """An AE that calls as calling_ae, every timeout at timeout_s (node.prior uses it too)."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    return ae


def associate(ae: AE, host: str, port: int, called_ae: str,
              tls: ssl.SSLContext | None):
    """The association, or AssociationFailed saying why (the rejection's reason if any)."""
    assoc = ae.associate(host, port, ae_title=called_ae,
                         tls_args=(tls, None) if tls else None)
    if not assoc.is_established:
        if assoc.is_rejected and assoc.acceptor.primitive is not None:
            p = assoc.acceptor.primitive
            raise AssociationFailed(
                f"association rejected by {called_ae}@{host}:{port} (result {p.result}, "
                f"source {p.result_source}, reason {p.diagnostic})")
        raise AssociationFailed(f"no association with {called_ae}@{host}:{port} "
                                "(refused, aborted or timed out)")
    return assoc


def echo(host: str, port: int, called_ae: str, calling_ae: str = "TRAUMA_NODE",
         tls: ssl.SSLContext | None = None, timeout_s: float = 10.0) -> int:
    """C-ECHO; returns the status (0 is success) or raises AssociationFailed."""
    ae = client_ae(calling_ae, timeout_s)
    ae.add_requested_context(Verification)
    assoc = associate(ae, host, port, called_ae, tls)
    try:
        status = assoc.send_c_echo()
        if not status:
            raise AssociationFailed("no C-ECHO response (timed out or aborted)")
        return int(status.Status)
    finally:
        assoc.release()


def collect(paths: list[Path]) -> tuple[dict[tuple[str, str], list[Path]], dict[str, str]]:
    """Group DICOM files by (SOP Class UID, transfer syntax); note what isn't DICOM."""
    groups: dict[tuple[str, str], list[Path]] = defaultdict(list)
    skipped: dict[str, str] = {}
    for path in paths:
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            sop_class = str(ds.SOPClassUID)
            ts = str(ds.file_meta.TransferSyntaxUID)
        except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
            skipped[str(path)] = f"not a DICOM file ({type(exc).__name__})"
            continue
        groups[(sop_class, ts)].append(path)
    return groups, skipped


def send(paths: list[Path], host: str, port: int, called_ae: str,
         calling_ae: str = "TRAUMA_NODE", tls: ssl.SSLContext | None = None,
         timeout_s: float = 60.0, before_each: BeforeEach | None = None,
         after_each: AfterEach | None = None) -> SendReport:
    """C-STORE every DICOM file in paths over one association, as stored (no transcoding).
    before_each / after_each: see BeforeEach and AfterEach (files that are not DICOM get
    after_each first; the others get neither when the association fails)."""
    groups, skipped = collect(paths)
    report = SendReport(skipped=skipped)
    after = after_each or (lambda path, error, cut_off: None)
    for path, why in skipped.items():
        after(Path(path), why, False)
    if not groups:
        return report
    ae = client_ae(calling_ae, timeout_s)
    syntaxes: dict[str, set[str]] = defaultdict(set)
    for sop_class, ts in groups:
        syntaxes[sop_class].add(ts)
    contexts = []
    for sop_class, tss in syntaxes.items():
        for ts in sorted(tss):  # one context per stored syntax: no conversion needed
            contexts.append(build_context(sop_class, [ts]))
    if len(contexts) > MAX_CONTEXTS:
        raise AssociationFailed(f"{len(contexts)} SOP class/transfer syntax pairs: more than "
                                f"{MAX_CONTEXTS} presentation contexts")
    ae.requested_contexts = contexts
    assoc = associate(ae, host, port, called_ae, tls)
    try:
        for path in sorted(p for files in groups.values() for p in files):
            error, cut_off = _store(assoc, path, before_each)
            if error is None:
                report.sent += 1
            else:
                report.failed[str(path)] = error
            after(path, error, cut_off)
    finally:
        if assoc.is_established:
            assoc.release()
    return report


def _store(assoc, path: Path, before_each: BeforeEach | None) -> tuple[str | None, bool]:
    """One C-STORE: (None, False) when stored, else (why, whether it went out unanswered)."""
    if not assoc.is_established:
        return "association lost", False
    if before_each is not None:
        before_each(path)
    status = assoc.send_c_store(path)
    code = int(status.Status) if status and "Status" in status else None
    if code is None:
        return "no response (timed out or aborted)", True
    if code == 0x0000 or (code & 0xF000) == 0xB000:  # success or warning
        return None, False
    comment = str(status.get("ErrorComment", "")) if status else ""
    return f"status 0x{code:04X} {comment}".strip(), False


def instance_uids(path: Path) -> tuple[str, str, str]:
    """(Study, Series, SOP Instance UID) of a stored object, read from its header."""
    ds = dcmread(path, stop_before_pixels=True, specific_tags=[
        "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def held_instances(uids: list[tuple[str, str, str]], host: str, port: int, called_ae: str,
                   calling_ae: str = "TRAUMA_NODE", tls: ssl.SSLContext | None = None,
                   timeout_s: float = 60.0) -> set[str]:
    """Which of these (Study, Series, SOP Instance UID) the destination holds: one C-FIND
    at IMAGE level each (Study Root), over one association of its own. Raises
    QueryUnanswered when the destination does not answer them all: association refused or
    aborted, the query model not accepted, a failure status or no response."""
    model = StudyRootQueryRetrieveInformationModelFind
    ae = client_ae(calling_ae, timeout_s)
    ae.add_requested_context(model)
    try:
        assoc = associate(ae, host, port, called_ae, tls)
    except AssociationFailed as exc:
        raise QueryUnanswered(str(exc)) from None
    held: set[str] = set()
    try:
        if not any(c.abstract_syntax == model for c in assoc.accepted_contexts):
            raise QueryUnanswered("C-FIND (Study Root) not accepted")
        for study, series, sop in uids:
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.StudyInstanceUID, query.SeriesInstanceUID = study, series
            query.SOPInstanceUID = sop
            code = None
            for status, identifier in assoc.send_c_find(query, model):
                code = int(status.Status) if status and "Status" in status else None
                if code in (0xFF00, 0xFF01) and identifier is not None and \
                        identifier.get("SOPInstanceUID") == sop:
                    held.add(sop)
            if code is None:
                raise QueryUnanswered("no C-FIND response (refused, timed out or aborted)")
            if code != 0x0000:
                raise QueryUnanswered(f"C-FIND status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    return held
