"""Delivery: send the outbox to its destinations, by C-STORE (host and port) or by DICOMweb
STOW-RS (url, node.dicomweb), with backoff and dead letters.

An object whose last attempt was cut off after it went out (outbox: in doubt) may be at
the destination already. With verify_interrupted = "c-find" (DIMSE: C-FIND, IMAGE level)
or "query" (DICOMweb: QIDO-RS) the destination is asked first and the object sent only if
it is missing: at most once. A destination that does not answer the query, or
verify_interrupted = "resend", gets it again unasked, logged and counted: at least once.
A destination's refusal for good (a DICOMweb 4xx, say) makes a dead letter at once.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from node.store import outbox
from node.config import Destination, Settings
from node.store.database import Index
from node.metrics import INTERRUPTED_DELIVERIES, Counters
from node.dicom.scu import AssociationFailed, QueryUnanswered, held_instances, instance_uids, send
from node.dicom.tls import client_context
from node.dicomweb import query, stow
from node.dicomweb.client import DicomwebUnavailable

if TYPE_CHECKING:
    from node.audit.trail import AuditTrail

log = logging.getLogger("trauma_node.delivery")


class Delivery:
    def __init__(self, settings: Settings, index: Index, counters: Counters | None = None,
                 audit: AuditTrail | None = None):
        self.settings = settings
        self.audit = audit
        self.index = index
        self.counters = counters or Counters()
        self.destinations = {d.name: d for d in settings.destinations}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def deliver_due(self) -> int:
        """One pass: send everything due, one association per destination. Returns sent."""
        by_destination: dict[str, list[outbox.OutboxItem]] = defaultdict(list)
        for item in outbox.due(self.index):
            by_destination[item.destination].append(item)
        sent = 0
        for name, items in by_destination.items():
            sent += self._deliver(name, items)
        return sent

    def _deliver(self, name: str, items: list[outbox.OutboxItem]) -> int:
        policy = self.settings.delivery
        dest = self.destinations.get(name)
        if dest is None:
            for item in items:
                outbox.mark_failed(self.index, item, f"destination {name!r} is no longer "
                                   "configured", policy)
            return 0
        items, resend = self._settle_interrupted(dest, items)
        by_path = {str(Path(item.path)): item for item in items}
        recorded: set[str] = set()
        started: set[str] = set()
        delivered: list[str] = []  # also those sent before a pass was cut short
        audited = _PassAudit()

        def before(path: Path) -> None:
            item = by_path[str(path)]
            if item.id in resend:
                self.counters.add(INTERRUPTED_DELIVERIES, resend[item.id])
            outbox.mark_started(self.index, item.id)
            started.add(str(path))

        def after(path: Path, error: str | None, cut_off: bool,
                  permanent: bool = False) -> None:
            item = by_path[str(path)]
            recorded.add(str(path))
            audited.outcome(item, path, error)
            if error is None:
                outbox.mark_sent(self.index, item.id)
                delivered.append(item.sop_instance_uid)
                log.info("delivered %s %s to %s", item.kind, item.sop_instance_uid, name)
                return
            state = outbox.mark_failed(self.index, item, error, policy,
                                       answered=str(path) in started and not cut_off,
                                       permanent=permanent)
            log.warning("delivery of %s %s to %s failed: %s (%s%s)", item.kind,
                        item.sop_instance_uid, name, error, state,
                        "; in doubt: it may have arrived" if cut_off else "")

        if not by_path:
            return 0
        try:
            self._send(dest, by_path, recorded, before, after)
            return len(delivered)
        finally:
            if self.audit is not None:
                audited.emit(self.audit, policy.calling_ae_title, dest,
                             [item for path, item in by_path.items() if path not in recorded])

    def _send(self, dest: Destination, by_path: dict[str, outbox.OutboxItem],
              recorded: set[str], before, after) -> None:
        policy, paths = self.settings.delivery, [Path(p) for p in by_path]
        try:
            if dest.protocol == "dicomweb":
                stow.send(paths, dest, policy.timeout_s, before, after)
            else:
                send(paths, dest.host, dest.port, dest.ae_title, policy.calling_ae_title,
                     self._tls(dest), policy.timeout_s, before_each=before, after_each=after)
        except (AssociationFailed, DicomwebUnavailable, OSError) as exc:
            rest = [item for path, item in by_path.items() if path not in recorded]
            states = [outbox.mark_failed(self.index, item, str(exc), policy) for item in rest]
            if rest:
                log.warning("delivery to %s (%s) failed for %d objects: %s; %d dead letters",
                            dest.name, dest.address, len(rest), exc, states.count("dead"))

    def _settle_interrupted(self, dest: Destination, items: list[outbox.OutboxItem]
                            ) -> tuple[list[outbox.OutboxItem], dict[int, str]]:
        """Rows in doubt that the destination holds are marked sent. Returns the rows still
        to send, and of those in doubt, how each is sent again: absent or unverified."""
        in_doubt = [item for item in items if item.attempt_started_at is not None]
        if not in_doubt:
            return items, {}
        unasked = {item.id: "unverified" for item in in_doubt}
        if dest.verify == "resend":
            log.warning("%d objects whose delivery to %s was cut off are sent again unasked "
                        "(verify_interrupted = \"resend\"): it may receive them twice",
                        len(in_doubt), dest.name)
            return items, unasked
        uids = {}
        for item in in_doubt:
            try:
                uids[item.id] = instance_uids(Path(item.path))
            except (InvalidDicomError, AttributeError, OSError, ValueError):
                pass  # not sendable either: its C-STORE attempt fails and says why
        try:
            held = self._held(dest, list(uids.values())) if uids else set()
        except (QueryUnanswered, OSError) as exc:
            log.warning("%s did not answer %s (%s): %d objects whose delivery was cut off are "
                        "sent again unasked; it may receive them twice (allow us to query it, "
                        "or set verify_interrupted = \"resend\")", dest.name,
                        "QIDO-RS" if dest.protocol == "dicomweb" else "C-FIND", exc,
                        len(in_doubt))
            return items, unasked
        resend = {}
        for item in in_doubt:
            if item.id in uids and uids[item.id][2] in held:
                outbox.mark_sent(self.index, item.id)
                self.counters.add(INTERRUPTED_DELIVERIES, "present")
                log.info("%s %s confirmed present at %s after an interrupted attempt: marked "
                         "sent, not sent again", item.kind, item.sop_instance_uid, dest.name)
            else:
                resend[item.id] = "absent" if item.id in uids else "unverified"
                log.info("%s %s not at %s after an interrupted attempt: sending it again",
                         item.kind, item.sop_instance_uid, dest.name)
        confirmed = {item.id for item in in_doubt} - set(resend)
        return [item for item in items if item.id not in confirmed], resend

    def _held(self, dest: Destination, uids: list[tuple[str, str, str]]) -> set[str]:
        timeout_s = self.settings.delivery.timeout_s
        if dest.protocol == "dicomweb":
            return query.held_instances(uids, dest, timeout_s)
        return held_instances(uids, dest.host, dest.port, dest.ae_title,
                              self.settings.delivery.calling_ae_title, self._tls(dest),
                              timeout_s)

    def _tls(self, dest: Destination):
        return client_context(self.settings.tls) if dest.tls else None

    def _run(self) -> None:
        while not self._stop.wait(self.settings.delivery.check_interval_s):
            try:
                self.deliver_due()
            except Exception:  # keep delivering; the next pass retries
                log.exception("delivery pass failed")

    def start(self) -> None:
        if not self.destinations:
            log.warning("no destinations configured: results stay in the data directory")
        self._thread = threading.Thread(target=self._run, name="delivery", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> bool:
        """timeout_s: how long to wait for a delivery under way (default: its own timeout).
        One cut off stays pending and is sent again at the next start. False when one was
        still under way."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.delivery.timeout_s + 5
                              if timeout_s is None else max(0.0, timeout_s))
        return self._thread is None or not self._thread.is_alive()


class _PassAudit:
    """What one delivery pass to one destination did, per study: one audit message each
    (DICOM Instances Transferred, node.audit.trail)."""

    def __init__(self) -> None:
        self.sent: dict[str, Counter[str]] = defaultdict(Counter)
        self.failed: Counter[str] = Counter()
        self.error: dict[str, str] = {}

    def outcome(self, item: outbox.OutboxItem, path: Path, error: str | None) -> None:
        if error is None:
            self.sent[item.study_uid][_sop_class(path)] += 1
        else:
            self.failed[item.study_uid] += 1
            self.error.setdefault(item.study_uid, error)

    def emit(self, audit: AuditTrail, calling_ae: str, dest: Destination,
             unsent: list[outbox.OutboxItem]) -> None:
        for item in unsent:  # the association failed: none of them went
            self.failed[item.study_uid] += 1
            self.error.setdefault(item.study_uid, "no association")
        for study_uid in sorted(set(self.sent) | set(self.failed)):
            audit.sent(study_uid, dict(self.sent.get(study_uid, {})), calling_ae,
                       dest.ae_title or dest.url, dest.host or urlsplit(dest.url).hostname,
                       self.failed[study_uid], self.error.get(study_uid, ""))


def _sop_class(path: Path) -> str:
    try:
        return str(dcmread(path, stop_before_pixels=True,
                           specific_tags=["SOPClassUID"]).SOPClassUID)
    except (InvalidDicomError, AttributeError, OSError, ValueError):
        return "unknown"
