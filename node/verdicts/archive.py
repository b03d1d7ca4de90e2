"""The readers' verdicts stored to the archive (IHE AI Results Assessment in spirit): a
study's verdict SR is sent to the destinations that take "verdict" objects, through the
outbox (node.store.outbox, node.work.delivery: the same retries, backoff, dead letters and
no duplicates, DIMSE or DICOMweb as each destination says), once its readers have finished.

When: a study whose verdicts changed since its last verdict SR, and that has had no new
verdict for verdicts.send_after_s (0: never), gets a new verdict SR. A reader judging six
findings in a minute makes one SR, not six; a correction an hour later makes a second.

What: the SR of the study's current verdicts (node.verdicts.report), its SOP Instance UID
derived from the verdicts it holds, in the study's one verdict series, Instance Number n
for the study's n-th, written atomically to
data/results/<study>/assessments/verdicts-<n>.dcm (retention removes that folder with the
study). It names in PredecessorDocumentsSequence the study's latest earlier verdict SR
that reached a destination, or may have (an attempt cut off); an earlier one still pending
is withdrawn, as an earlier series version's results are (node.store.outbox.withdraw), but
not one cut off (delivery settles it: it may be there).

Where it is recorded: the outbox rows themselves, kind "verdict", their series_uid the
verdict series and their series_version the newest verdict id the SR holds (the set's
version). A study is due when its newest verdict id is above that of its rows; that look
groups every verdict, so a pass makes it only when a verdict came or became quiet since the
last (two indexed look-ups), and every FULL_LOOK_EVERY all the same. A study
whose verdict SR cannot be made (its AI objects were removed) is passed over until a new
verdict comes, and said once. Two nodes sharing the database and data directory may both
make the same SR: the same UID, the same file, one outbox row per destination.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage
from sqlalchemy import func, or_, select, update

from dicom_out.outputs import STUDY_KINDS
from node.config import Settings
from node.store.database import Index, utcnow
from node.store.tables import OutboxItem, OutboxState, Study, Verdict
from node.store.verdicts import assessments_dir
from node.verdicts import report
from node.work.results import queue_delivery, write_atomically

log = logging.getLogger("trauma_node.verdicts")

KIND = STUDY_KINDS[0]  # "verdict"
# Without a new verdict, the studies due are looked for in full this often all the same.
FULL_LOOK_EVERY = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Stored:
    """A verdict SR of the study queued to the destinations."""
    sop_instance_uid: str
    series_uid: str
    version: int  # the newest verdict id it holds
    path: str
    reached: bool  # sent to a destination, or may have been (an attempt cut off)


def stored(index: Index, study_uid: str) -> list[Stored]:
    """The study's verdict SRs in the outbox, oldest first (withdrawn ones included)."""
    with index.session() as session:
        rows = session.execute(select(OutboxItem).where(
            OutboxItem.study_uid == study_uid, OutboxItem.kind == KIND)
            .order_by(OutboxItem.series_version, OutboxItem.id)).scalars().all()
        by_sop: dict[str, Stored] = {}
        for r in rows:
            reached = r.state == OutboxState.SENT.value or r.attempt_started_at is not None
            old = by_sop.get(r.sop_instance_uid)
            by_sop[r.sop_instance_uid] = Stored(
                r.sop_instance_uid, r.series_uid, r.series_version, r.path,
                reached or (old is not None and old.reached))
    return sorted(by_sop.values(), key=lambda s: s.version)


def predecessor_of(entries: list[Stored], sop_uid: str) -> Stored | None:
    """The SR a new one (sop_uid) supersedes: the latest earlier one that reached, or may
    have reached, a destination."""
    earlier = [s for s in entries if s.sop_instance_uid != sop_uid and s.reached]
    return earlier[-1] if earlier else None


def number_of(entries: list[Stored], sop_uid: str) -> int:
    """Its Instance Number: its place among the study's verdict SRs."""
    for number, entry in enumerate(entries, start=1):
        if entry.sop_instance_uid == sop_uid:
            return number
    return len(entries) + 1


def predecessor_header(study_uid: str, entry: Stored | None) -> Dataset | None:
    """What PredecessorDocumentsSequence needs of an earlier verdict SR."""
    if entry is None:
        return None
    ds = Dataset()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = entry.series_uid
    ds.SOPClassUID = ComprehensiveSRStorage
    ds.SOPInstanceUID = entry.sop_instance_uid
    return ds


def due(index: Index, quiet_s: float, now: dt.datetime | None = None) -> list[tuple[str, int]]:
    """(study UID, newest verdict id) of the studies on the node whose verdicts changed
    since their last verdict SR and had no new verdict for quiet_s, the longest waiting
    first."""
    cutoff = (now or utcnow()) - dt.timedelta(seconds=quiet_s)
    last = (select(Verdict.study_uid, func.max(Verdict.id).label("last_id"),
                   func.max(Verdict.created_at).label("last_at"))
            .group_by(Verdict.study_uid).subquery())
    done = (select(OutboxItem.study_uid, func.max(OutboxItem.series_version).label("version"))
            .where(OutboxItem.kind == KIND).group_by(OutboxItem.study_uid).subquery())
    query = (select(last.c.study_uid, last.c.last_id)
             .join(Study, Study.study_uid == last.c.study_uid)
             .outerjoin(done, done.c.study_uid == last.c.study_uid)
             .where(last.c.last_at <= cutoff,
                    or_(done.c.version.is_(None), done.c.version < last.c.last_id))
             .order_by(last.c.last_at))
    with index.session() as session:
        return [(uid, int(last_id)) for uid, last_id in session.execute(query).all()]


def store_study(settings: Settings, index: Index, study_uid: str) -> Stored | None:
    """Make the study's verdict SR of its current verdicts, write it, and queue it to the
    destinations that take "verdict"; earlier ones still pending are withdrawn. None when
    this set of verdicts was stored already. Raises report.NoVerdictSR."""
    now = report.current(settings, index, study_uid)
    series_uid, sop_uid = now.uids
    entries = stored(index, study_uid)
    if any(e.sop_instance_uid == sop_uid for e in entries):
        return None
    previous = predecessor_of(entries, sop_uid)
    number = number_of(entries, sop_uid)
    dataset = report.build(now, predecessor_header(study_uid, previous), number)
    path = assessments_dir(settings.data_dir, study_uid) / f"verdicts-{number}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = report.to_bytes(dataset)
    write_atomically(path, lambda h: h.write(data), durable=True)
    queued = queue_delivery(settings, index, study_uid, series_uid, now.last_verdict_id,
                            {KIND: [path]})
    with index.engine.begin() as conn:
        withdrawn = conn.execute(update(OutboxItem).where(
            OutboxItem.study_uid == study_uid, OutboxItem.kind == KIND,
            OutboxItem.sop_instance_uid != sop_uid,
            OutboxItem.state == OutboxState.PENDING.value,
            # one cut off may have arrived: it is named as the predecessor, and settled
            OutboxItem.attempt_started_at.is_(None)).values(
            state=OutboxState.WITHDRAWN.value,
            last_error="withdrawn: a later verdict SR of the study supersedes it")).rowcount
    log.info("verdict SR %s of study %s (%d verdicts, instance %d%s) queued to %d "
             "destinations%s", sop_uid, study_uid, len(now.included), number,
             f", supersedes {previous.sop_instance_uid}" if previous else "", queued,
             f"; {withdrawn} unsent earlier ones withdrawn" if withdrawn else "")
    return Stored(sop_uid, series_uid, now.last_verdict_id, str(path), False)


class VerdictArchive:
    """The loop of `serve` that stores the studies' verdict SRs once their readers have
    finished (every verdicts.check_interval_s)."""

    def __init__(self, settings: Settings, index: Index):
        self.settings = settings
        self.index = index
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # study UID -> newest verdict id that could not be, or needed not be, stored
        self._passed_over: dict[str, int] = {}
        # (its cutoff, the newest verdict id, when) at the last full look
        self._looked: tuple[dt.datetime, int | None, dt.datetime] | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.verdicts.send_after_s > 0 and any(
            KIND in d.objects for d in self.settings.destinations)

    def _changed(self, now: dt.datetime) -> bool:
        """Whether a study may have become due since the last full look (which groups every
        verdict): a verdict came (the newest id changed), one became quiet since (its time in
        (last cutoff, cutoff]), or FULL_LOOK_EVERY passed (a study received again, a
        verdict committed late by another node). Two indexed look-ups."""
        cutoff = now - dt.timedelta(seconds=self.settings.verdicts.send_after_s)
        with self.index.session() as session:
            newest = session.execute(select(func.max(Verdict.id))).scalar_one()
            looked = self._looked
            if looked is not None and looked[1] == newest and now - looked[2] < FULL_LOOK_EVERY:
                quiet_since = session.execute(select(Verdict.id).where(
                    Verdict.created_at > looked[0], Verdict.created_at <= cutoff).limit(1)).first()
                if quiet_since is None:
                    return False
        self._looked = (cutoff, newest, now)
        return True

    def run_once(self, now: dt.datetime | None = None) -> list[Stored]:
        """One pass: the verdict SR of every study due. Returns those queued."""
        if not self.enabled:
            return []
        now = now or utcnow()
        if not self._changed(now):
            return []
        made: list[Stored] = []
        try:
            for study_uid, last_id in due(self.index, self.settings.verdicts.send_after_s, now):
                if self._stop.is_set():
                    break
                if self._passed_over.get(study_uid) == last_id:
                    continue
                try:
                    entry = store_study(self.settings, self.index, study_uid)
                except report.NoVerdictSR as exc:
                    log.warning("no verdict SR for study %s: %s", study_uid, exc)
                    entry = None
                if entry is None:
                    self._passed_over[study_uid] = last_id
                else:
                    self._passed_over.pop(study_uid, None)
                    made.append(entry)
        except Exception:
            self._looked = None  # the next pass looks again in full
            raise
        return made

    def _run(self) -> None:
        while not self._stop.wait(self.settings.verdicts.check_interval_s):
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - the next pass tries again
                log.exception("verdict SR pass failed")

    def start(self) -> None:
        if self.settings.verdicts.send_after_s <= 0:
            log.info("verdicts.send_after_s = 0: verdict SRs are not sent to the destinations")
            return
        if not self.enabled:
            log.info("no destination takes \"verdict\" objects: verdict SRs are not sent")
            return
        self._thread = threading.Thread(target=self._run, name="verdict-archive", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """False when a pass was still under way after timeout_s."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, timeout_s))
        return self._thread is None or not self._thread.is_alive()
