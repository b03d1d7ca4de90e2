"""C-ECHO and C-STORE as an SCU: for admins (`trauma-node echo/send`) and delivery."""

from __future__ import annotations

import logging
import ssl
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import Verification

# Send files as stored, streamed from disk: no decode, no re-encode, bounded memory.
_config.STORE_SEND_CHUNKED_DATASET = True

log = logging.getLogger("trauma_node.scu")

MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association


class AssociationFailed(RuntimeError):
    pass


@dataclass
class SendReport:
    sent: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # file -> why
    skipped: dict[str, str] = field(default_factory=dict)  # not DICOM files


def _associate(ae: AE, host: str, port: int, called_ae: str,
               tls: ssl.SSLContext | None):
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
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(Verification)
    assoc = _associate(ae, host, port, called_ae, tls)
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
         timeout_s: float = 60.0) -> SendReport:
    """C-STORE every DICOM file in paths over one association, as stored (no transcoding)."""
    groups, skipped = collect(paths)
    report = SendReport(skipped=skipped)
    if not groups:
        return report
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
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
    assoc = _associate(ae, host, port, called_ae, tls)
    try:
        for path in sorted(p for files in groups.values() for p in files):
            if not assoc.is_established:
                report.failed[str(path)] = "association lost"
                continue
            status = assoc.send_c_store(path)
            code = int(status.Status) if status and "Status" in status else None
            if code is None:
                report.failed[str(path)] = "no response (timed out or aborted)"
            elif code == 0x0000 or (code & 0xF000) == 0xB000:  # success or warning
                report.sent += 1
            else:
                comment = str(status.get("ErrorComment", "")) if status else ""
                report.failed[str(path)] = f"status 0x{code:04X} {comment}".strip()
    finally:
        if assoc.is_established:
            assoc.release()
    return report
