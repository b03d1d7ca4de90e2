"""The DICOM SCP: C-ECHO and C-STORE of any storage SOP class.

CT Image and Enhanced CT Image Storage are what the pipeline analyses; every
other storage SOP class a PACS forwards with a study (scouts, dose reports,
secondary captures) is accepted and stored too, and recorded as not analysed,
so that a whole-study forward is never refused. Objects are stored as received
(no transcoding); the handler does nothing slow.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

from node.dicom import acceptor_choice
from node.config import Settings
from node.dicom.connections import Guard
from node.store.headers import extract
from node.metrics import (ASSOCIATIONS_ACCEPTED, ASSOCIATIONS_REJECTED, CSTORE_RESPONSES,
                      RECEIVED_BYTES, Counters)
from node.dicom.policy import (LOCAL_LIMIT_EXCEEDED, SERVICE_PROVIDER_PRESENTATION, TRANSIENT,
                               AssociationPolicy)
from node.dicom.dataset_bytes import file_meta_prefix, pixel_data_problem, read_header
from node.store.receiving import Receiver
from node.store.spool import InvalidUID, check_uid
from node.dicom.tls import server_context

if TYPE_CHECKING:
    from node.audit.trail import AuditTrail
    from node.dicom.receivers import SharedLoad

log = logging.getLogger("trauma_node.scp")

# Refusals for who the peer is, audited as node authentication failures (node.audit.trail);
# the others (disk low, association limit, no request) are capacity, logged and counted.
AUDITED_REFUSALS = frozenset({"called_ae", "calling_ae", "tls", "bad_request"})

# pynetdicom accepts, per context, the first syntax of this list that the sender
# proposed. Lossless compressed first, so a sender offering its files' own
# compression keeps it (stored as received); uncompressed next; lossy last, so a
# sender that also offers lossless is never asked to degrade the images.
TRANSFER_SYNTAXES = [
    JPEGLosslessSV1, JPEGLossless, JPEGLSLossless, JPEG2000Lossless, RLELossless,
    UID("1.2.840.10008.1.2.4.201"), UID("1.2.840.10008.1.2.4.202"),  # HTJ2K lossless
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLSNearLossless, JPEG2000, UID("1.2.840.10008.1.2.4.203"),  # HTJ2K
    JPEGBaseline8Bit, JPEGExtended12Bit,
]

# C-STORE statuses (PS3.4 Annex B.2.3)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
ABORT_WAIT_S = 1.0  # at shutdown, for an aborted association's thread to end

_FAILURE_OUTCOMES = {OUT_OF_RESOURCES: "out_of_resources",
                     DOES_NOT_MATCH_SOP_CLASS: "does_not_match_sop_class",
                     CANNOT_UNDERSTAND: "cannot_understand"}

# The image SOP classes the pipeline analyses: Pixel Data is Type 1 in each.
PIXEL_DATA_REQUIRED = frozenset({
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
})


def _failure(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]  # LO: 64 characters
    return ds


def _dataset_size(request: Any) -> int:
    if request.DataSet is None:
        return 0
    with request.DataSet.getbuffer() as body:
        return body.nbytes


@dataclass
class _Repeated:
    """A kind of failure in one association: its first line, logged, and how many more."""
    level: int
    first: str
    more: int = 0


@dataclass
class _AssociationStats:
    calling_ae: str
    host: str
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    bytes: int = 0
    # failure kind -> its first line and count; summarised when the association ends
    repeated: dict[tuple[str, str], _Repeated] = field(default_factory=dict)
    # study UID -> SOP Class UID -> instances (stored or already held), for the audit trail
    studies: dict[str, Counter[str]] = field(default_factory=dict)


def _log_failure(stats: _AssociationStats | None, level: int, msg: str, *args: Any,
                 kind: str = "", exc_info: bool = False) -> None:
    """Log a failed C-STORE the first time its kind (msg, the format, and kind) occurs in
    the association; later ones are counted and summarised in one line when it ends
    (_summarise), so that 147 refused instances of one series make two lines, not 147."""
    if stats is not None:
        seen = stats.repeated.get((msg, kind))
        if seen is not None:
            seen.more += 1
            return
        stats.repeated[(msg, kind)] = _Repeated(level, msg % args)
    log.log(level, msg, *args, exc_info=exc_info)


def _invalid_uid(stats: _AssociationStats | None, exc: InvalidUID) -> Dataset:
    # Its kind, without the value: 'Study Instance UID is not a valid UID'.
    _log_failure(stats, logging.WARNING, "C-STORE failed: %s", exc, kind=str(exc).split(":")[0])
    return _failure(CANNOT_UNDERSTAND, str(exc))


def _summarise(stats: _AssociationStats, how: str) -> None:
    for seen in stats.repeated.values():
        if seen.more:
            log.log(seen.level, "%s ... and %d more like it (association %s: calling %r host %s)",
                    seen.first, seen.more, how, stats.calling_ae, stats.host)


class StorageSCP:
    def __init__(self, settings: Settings, receiver: Receiver, policy: AssociationPolicy,
                 counters: Counters | None = None, audit: AuditTrail | None = None,
                 load: SharedLoad | None = None):
        """load: this process's share of the node's receiving load (node.dicom.receivers:
        the node's association total, who accepts next); None: this process alone
        receives."""
        self.settings = settings
        self.load = load
        self.audit = audit
        self.receiver = receiver
        self.policy = policy
        self.counters = counters if counters is not None else Counters()
        self.ae = self._make_ae()
        self.server = None
        self._stats: dict[int, _AssociationStats] = {}
        self._stats_lock = threading.Lock()

    def _make_ae(self) -> AE:
        net = self.settings.network
        ae = AE(ae_title=self.settings.node.ae_title)
        ae.maximum_associations = net.max_associations
        ae.acse_timeout = net.acse_timeout_s
        ae.dimse_timeout = net.dimse_timeout_s
        ae.network_timeout = net.network_timeout_s
        ae.maximum_pdu_size = net.max_pdu_bytes
        # Policy is checked in _on_requested, with a log line and the proper reason.
        ae.require_called_aet = False
        ae.require_calling_aet = []
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
        return ae

    # -- association events ----------------------------------------------------
    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        rq = assoc.requestor
        if self.load is not None:
            self.load.request_arrived()
        # Before negotiation only the request primitive holds the AE titles.
        calling = str(rq.primitive.calling_ae_title)
        rejection = self.policy.check(str(rq.primitive.called_ae_title), calling, rq.address)
        if rejection is not None:
            log.warning("association rejected: calling %r host %s: %s", calling, rq.address,
                        rejection.reason)
            self.counters.add(ASSOCIATIONS_REJECTED, rejection.code)
            if self.audit is not None and rejection.code in AUDITED_REFUSALS:
                self.audit.node_refused(rq.address, calling, rejection.reason)
            assoc.acse.send_reject(rejection.result, rejection.source, rejection.diagnostic)
            assoc.kill()
            return
        if self.load is not None and not self.load.count_in(id(assoc)):
            log.warning("association rejected: calling %r host %s: local limit (%d "
                        "associations)", calling, rq.address,
                        self.settings.network.max_associations)
            self.counters.add(ASSOCIATIONS_REJECTED, "association_limit")
            assoc.acse.send_reject(TRANSIENT, SERVICE_PROVIDER_PRESENTATION, LOCAL_LIMIT_EXCEEDED)
            assoc.kill()

    def _on_rejected(self, event: evt.Event) -> None:
        # Rejections made by pynetdicom itself, e.g. too many associations.
        rq = event.assoc.requestor
        log.warning("association rejected: calling %r host %s: local limit (%d associations)",
                    rq.ae_title, rq.address, self.settings.network.max_associations)
        self.counters.add(ASSOCIATIONS_REJECTED, "association_limit")

    def _on_connection_refused(self, host: str, code: str | None, reason: str) -> None:
        """A connection closed before it was an association (node.dicom.connections)."""
        if self.load is not None:
            self.load.request_arrived()
        if code is None:  # the peer left (a port check, say): nothing refused
            log.info("connection from %s closed: %s", host, reason)
            return
        log.warning("connection refused: host %s: %s", host, reason)
        self.counters.add(ASSOCIATIONS_REJECTED, code)
        if self.audit is not None and code in AUDITED_REFUSALS:
            self.audit.node_refused(host, "", reason)

    def _on_established(self, event: evt.Event) -> None:
        rq = event.assoc.requestor
        with self._stats_lock:
            self._stats[id(event.assoc)] = _AssociationStats(rq.ae_title, rq.address)
        self.counters.add(ASSOCIATIONS_ACCEPTED)
        tls = "yes" if self.settings.tls.enabled else "no"
        log.info("association accepted: calling %r host %s tls %s (process %d)", rq.ae_title,
                 rq.address, tls, os.getpid())

    def _on_closed(self, event: evt.Event) -> None:
        assoc = event.assoc
        with self._stats_lock:
            stats = self._stats.pop(id(assoc), None)
        if self.load is not None:
            self.load.count_out(id(assoc))
        # Not released is cut short: pynetdicom flags an abort only after the connection's
        # close event, but a release before it (the A-RELEASE-RP goes out first).
        self.receiver.association_closed(id(assoc), aborted=not assoc.is_released)
        if stats is None:
            return
        how = "released" if assoc.is_released else "aborted" if assoc.is_aborted else "closed"
        _summarise(stats, how)
        if self.audit is not None:  # one message per study the association brought
            for study_uid, sop_classes in stats.studies.items():
                self.audit.received(study_uid, sop_classes, stats.calling_ae, stats.host,
                                    assoc.is_released, how)
        seconds = time.monotonic() - stats.started
        log.info("association %s: calling %r host %s: %d stored, %d duplicates, %d failed, "
                 "%.1f MB in %.2f s", how, stats.calling_ae, stats.host, stats.stored,
                 stats.duplicates, stats.failed, stats.bytes / 1e6, seconds)

    # -- DIMSE ---------------------------------------------------------------------
    def _on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def _on_store(self, event: evt.Event) -> int | Dataset:
        stats = self._stats.get(id(event.assoc))
        status = self._store(event, stats)
        if not isinstance(status, int):  # a failure: counted here, successes in _store
            if stats is not None:
                stats.failed += 1
            outcome = _FAILURE_OUTCOMES.get(int(status.Status))
            if outcome is not None:
                self.counters.add(CSTORE_RESPONSES, outcome)
        return status

    def _store(self, event: evt.Event, stats: _AssociationStats | None) -> int | Dataset:
        request = event.request
        try:  # the request's own UIDs, perhaps missing (node.dicom.acceptor_choice routes those here)
            check_uid(request.AffectedSOPClassUID, "SOP Class UID")
            sop_uid = check_uid(request.AffectedSOPInstanceUID, "SOP Instance UID")
        except InvalidUID as exc:
            return _invalid_uid(stats, exc)
        if self.policy.disk_low():
            _log_failure(stats, logging.ERROR,
                         "C-STORE refused: free disk below %d MB (storage.min_free_disk_mb)",
                         self.settings.storage.min_free_disk_mb)
            return _failure(OUT_OF_RESOURCES, "Out of resources: disk space low")
        if _dataset_size(request) == 0:
            _log_failure(stats, logging.WARNING, "C-STORE failed: empty data set (SOP %s)",
                         sop_uid)
            return _failure(CANNOT_UNDERSTAND, "Cannot understand: empty data set")
        transfer_syntax = UID(event.context.transfer_syntax)
        # Only the header is parsed (up to Pixel Data): see node/dicom/dataset_bytes.py.
        try:
            if transfer_syntax.is_deflated:
                ds = event.dataset
                header, pixels = extract(ds), pixel_data_problem(ds, transfer_syntax)
            else:
                header, pixels = read_header(request.DataSet, transfer_syntax)
        except Exception as exc:  # any decode failure: refuse this object, keep serving
            _log_failure(stats, logging.WARNING,
                         "C-STORE failed: dataset cannot be decoded (%s, SOP %s)",
                         type(exc).__name__, sop_uid)
            return _failure(CANNOT_UNDERSTAND, "Cannot understand: dataset cannot be decoded")
        if header.sop_uid and header.sop_uid != sop_uid:
            _log_failure(stats, logging.WARNING,
                         "C-STORE failed: SOP Instance UID %s in the data set, %s in the request",
                         header.sop_uid, sop_uid)
            return _failure(CANNOT_UNDERSTAND, "SOP Instance UID differs from the request")
        header.sop_uid = sop_uid
        header.sop_class_uid = str(request.AffectedSOPClassUID)
        try:  # a data set without them is not understood, whatever else it lacks
            check_uid(header.study_uid, "Study Instance UID")
            check_uid(header.series_uid, "Series Instance UID")
        except InvalidUID as exc:
            return _invalid_uid(stats, exc)
        if pixels == "truncated":
            _log_failure(stats, logging.WARNING, "C-STORE failed: pixel data truncated (SOP %s)",
                         sop_uid)
            return _failure(CANNOT_UNDERSTAND, "Pixel data shorter than Rows x Columns")
        if pixels == "missing" and header.sop_class_uid in PIXEL_DATA_REQUIRED:
            _log_failure(stats, logging.WARNING, "C-STORE failed: CT image without Pixel Data "
                         "(SOP %s)", sop_uid)
            return _failure(DOES_NOT_MATCH_SOP_CLASS, "Data set does not match SOP Class: "
                            "no Pixel Data")
        try:
            # What Event.encoded_dataset() returns, without its two copies of the
            # data set: the File Meta prefix, then the receive buffer itself.
            prefix = file_meta_prefix(request.AffectedSOPClassUID, sop_uid, transfer_syntax)
            calling = stats.calling_ae if stats else ""
            with request.DataSet.getbuffer() as body:
                result = self.receiver.store(header, (prefix, body), str(transfer_syntax),
                                             calling, id(event.assoc))
        except InvalidUID as exc:
            return _invalid_uid(stats, exc)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                _log_failure(stats, logging.ERROR,
                             "C-STORE refused: disk full while writing SOP %s", sop_uid)
                return _failure(OUT_OF_RESOURCES, "Out of resources: disk full")
            _log_failure(stats, logging.ERROR, "C-STORE failed: cannot write SOP %s", sop_uid,
                         exc_info=True)
            return _failure(OUT_OF_RESOURCES, "Out of resources: cannot write")
        if stats is not None:
            self._count_study(stats, header.study_uid, header.sop_class_uid)
        if result.stored:
            self.counters.add(CSTORE_RESPONSES, "stored")
            self.counters.add(RECEIVED_BYTES, amount=result.size)
            if stats is not None:
                stats.stored += 1
                stats.bytes += result.size
        else:
            self.counters.add(CSTORE_RESPONSES, "duplicate")
            if stats is not None:
                stats.duplicates += 1
        return SUCCESS

    def _count_study(self, stats: _AssociationStats, study_uid: str, sop_class: str) -> None:
        counts = stats.studies.get(study_uid)
        if counts is None:
            counts = stats.studies[study_uid] = Counter()
            if self.audit is not None:
                self.audit.begin_receiving(study_uid, stats.calling_ae, stats.host)
        counts[sop_class] += 1

    # -- lifecycle -----------------------------------------------------------------
    def handlers(self) -> list:
        return [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_CONN_CLOSE, self._on_closed),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]

    def start(self, listen_socket: Any = None) -> None:
        """listen_socket: accept on it, bound already and shared with the node's other
        receiving processes (node.dicom.receivers), instead of binding the port."""
        node = self.settings.node
        context = server_context(self.settings.tls) if self.settings.tls.enabled else None
        # pynetdicom's acceptor with event-driven waiting instead of 1 ms polling
        # (node/dicom/acceptor_choice.py); falls back to the stock one on another pynetdicom.
        net = self.settings.network
        guard = Guard(net.association_request_timeout_s, net.network_timeout_s,
                      self._on_connection_refused)
        if self.load is not None:
            guard.accept_delay, guard.on_accepted = self.load.accept_delay, self.load.accepted
        self.server = acceptor_choice.start_server(self.ae, (node.dicom_bind, node.dicom_port),
                                                   self.handlers(), guard, ssl_context=context,
                                                   listen_socket=listen_socket)
        log.info("DICOM SCP %r listening on %s:%d%s", node.ae_title, node.dicom_bind,
                 node.dicom_port, " (TLS)" if context else "")

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let senders finish within grace_s, then abort the rest.

        Whatever was acknowledged is already on disk and in the index.
        """
        if self.server is None:
            return
        self.server.shutdown()
        deadline = time.monotonic() + grace_s
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        remaining = self.ae.active_associations
        if remaining:
            log.warning("aborting %d associations still open at shutdown", len(remaining))
        self.ae.shutdown()
        for assoc in remaining:  # their last steps use the index, which closes next
            assoc.join(timeout=ABORT_WAIT_S)
        self.server = None
