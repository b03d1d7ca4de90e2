"""Retention: a study leaves the node some days after its results were delivered.

The PACS is the archive; the node keeps a study only as long as it may be asked
about or analysed again (`storage.retention_days`, 0 keeps everything). A study
goes when its last image arrived more than retention_days ago and nothing of it
is in flight: no series receiving or sent to, no job queued or running, no delivery pending
or dead. A dead letter keeps its study (the results never reached the PACS) until
`trauma-node retry` delivers it.

What goes: its instances in the spool, its results folders (its readers' verdict SRs,
results/<study>/assessments, too), and its rows (instances, jobs, series, outbox, verdict
SRs' included, questions and answers, the study; the readers' verdicts stay, for the
agreement over time). The rows go
first, in one transaction that checks the conditions again, so that the index
never points at a file that is gone; then the files those rows named, one by one,
and the folders left empty. A file that arrived meanwhile (the PACS sending the
study again) is not among them, so nothing acknowledged is ever removed: it makes
the study anew. `serve` runs this at start-up and every
`storage.retention_check_interval_s`, holding the receiver's lock so that its
in-memory series hints are dropped with the rows (SQLite may reuse their ids).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection

from node.config import Settings
from node.prior import state as prior_state
from node.store.conversations import QaMessage
from node.store.database import Index, Instance, Job, JobState, Series, SeriesState, Study, utcnow
from node.store.outbox import OutboxItem, OutboxState
from node.store.tables import AlertCheck, AlertItem, Sender
from node.store.spool import results_dir
from node.store.verdicts import assessments_dir

log = logging.getLogger("trauma_node.retention")


@dataclass
class Removed:
    """What one pass removed, or would remove (dry run)."""

    studies: list[str] = field(default_factory=list)  # study UIDs
    instances: int = 0
    bytes: int = 0
    kept_for_dead_letters: int = 0  # old enough, kept: deliveries that gave up


def _expired(cutoff: dt.datetime, study_id=None):
    """Oldest last image first."""
    # Studies whose last image is older than cutoff and with nothing in flight.
    last_image = (select(Series.study_id, func.max(Instance.received_at).label("last"))
                  .join(Instance, Instance.series_id == Series.id)
                  .group_by(Series.study_id).subquery())
    receiving = select(Series.study_id).where(Series.state == SeriesState.RECEIVING.value)
    # An association still sending to it (a duplicate into a complete series, say).
    sending = select(Series.study_id).join(Sender, Sender.series_id == Series.id)
    working = (select(Series.study_id).join(Job, Job.series_id == Series.id)
               .where(Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value])))
    pending = (select(Study.id).join(OutboxItem, OutboxItem.study_uid == Study.study_uid)
               .where(OutboxItem.state == OutboxState.PENDING.value))
    query = (select(Study.id, Study.study_uid)
             .outerjoin(last_image, last_image.c.study_id == Study.id)
             .where(func.coalesce(last_image.c.last, Study.created_at) < cutoff,
                    Study.id.not_in(receiving), Study.id.not_in(sending),
                    Study.id.not_in(working),
                    Study.id.not_in(pending))
             .order_by(func.coalesce(last_image.c.last, Study.created_at), Study.id))
    return query.where(Study.id == study_id) if study_id is not None else query


def _dead_letters(study_uid: str):
    return select(func.count()).select_from(OutboxItem).where(
        OutboxItem.study_uid == study_uid, OutboxItem.state == OutboxState.DEAD.value)


# Low disk: studies may go before their time, but never within this long of their last
# image (the radiologist may still be reading and asking about them).
PRESSURE_MIN_AGE = dt.timedelta(hours=1)
PRESSURE_CHECK_S = 30.0


class Retention:
    def __init__(self, settings: Settings, index: Index,
                 forget_series: Callable[[list[str]], None] | None = None,
                 lock: threading.Lock | None = None,
                 free_bytes: Callable[[], int] | None = None):
        """forget_series: drops in-memory state of the series removed (the receiver's
        hints); lock: held while rows are removed (the receiver's); free_bytes: the
        spool's free space now."""
        self.settings = settings
        self.index = index
        self.forget_series = forget_series or (lambda uids: None)
        self.lock = lock if lock is not None else threading.Lock()
        self.free_bytes = free_bytes or (lambda: shutil.disk_usage(settings.spool_dir).free)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stuck_reported = False

    @property
    def enabled(self) -> bool:
        return self.settings.storage.retention_days > 0

    def cutoff(self, now: dt.datetime | None = None) -> dt.datetime:
        return (now or utcnow()) - dt.timedelta(days=self.settings.storage.retention_days)

    def run_once(self, now: dt.datetime | None = None, dry_run: bool = False) -> Removed:
        """The studies past storage.retention_days."""
        if not self.enabled:
            return Removed()
        removed = self._remove_expired(self.cutoff(now), dry_run)
        if removed.studies and not dry_run:
            log.info("retention: removed %d studies (%d instances, %.1f MB) whose last image "
                     "is older than %s days", len(removed.studies), removed.instances,
                     removed.bytes / 1e6, self.settings.storage.retention_days)
        return removed

    def relieve_disk(self, now: dt.datetime | None = None) -> Removed:
        """Free space below storage.purge_below_free_mb: the oldest studies go early (never
        within PRESSURE_MIN_AGE of their last image) until it is above again, so that the
        node goes on receiving instead of refusing new studies."""
        mark = self.settings.storage.purge_below_free_mb * 2**20
        if mark <= 0 or self.free_bytes() >= mark:
            self._stuck_reported = False
            return Removed()
        removed = self._remove_expired((now or utcnow()) - PRESSURE_MIN_AGE, dry_run=False,
                                       enough=lambda: self.free_bytes() >= mark)
        free_mb = self.free_bytes() / 2**20
        if removed.studies:
            log.warning("retention: free disk below %d MB: removed %d studies early (%.1f MB); "
                        "%.0f MB free now", self.settings.storage.purge_below_free_mb,
                        len(removed.studies), removed.bytes / 1e6, free_mb)
        # Once per low-disk spell, not at every check (every PRESSURE_CHECK_S).
        if free_mb < self.settings.storage.purge_below_free_mb and not self._stuck_reported:
            self._stuck_reported = True
            log.warning("retention: free disk still below %d MB (%.0f MB free): nothing more "
                        "may go yet", self.settings.storage.purge_below_free_mb, free_mb)
        return removed

    def _remove_expired(self, cutoff: dt.datetime, dry_run: bool,
                        enough: Callable[[], bool] | None = None) -> Removed:
        removed = Removed()
        with self.index.session() as session:
            candidates = session.execute(_expired(cutoff)).all()
        for study_id, study_uid in candidates:
            if enough is not None and enough():
                break
            with self.index.session() as session:
                if session.execute(_dead_letters(study_uid)).scalar_one():
                    removed.kept_for_dead_letters += 1
                    continue
            files = (self._list_files(study_id, study_uid) if dry_run
                     else self._remove_rows(study_id, study_uid, cutoff))
            if files is None:  # something arrived or started meanwhile
                continue
            spool, results = files
            removed.studies.append(study_uid)
            removed.instances += len(spool)
            removed.bytes += sum(size for _, size in spool)
            if not dry_run:
                self._remove_files([self.settings.spool_dir / path for path, _ in spool],
                                   self.settings.spool_dir)
                for folder in results:
                    shutil.rmtree(folder, ignore_errors=True)
                    _remove_empty_parents(folder, self.settings.data_dir / "results")
                prior_state.forget(self.settings.data_dir, study_uid)  # its prior lookup's
        if removed.kept_for_dead_letters:
            log.warning("retention: kept %d expired studies whose results were never delivered "
                        "(dead letters: `trauma-node retry`)", removed.kept_for_dead_letters)
        return removed

    def _files_of(self, conn: Connection, study_id: int, study_uid: str
                  ) -> tuple[list[tuple[str, int]], list[Path]]:
        """The study's instances in the spool (path, size) and its results folders."""
        spool = conn.execute(select(Instance.path, Instance.size_bytes)
                             .join(Series, Series.id == Instance.series_id)
                             .where(Series.study_id == study_id)).all()
        versions = conn.execute(select(Series.series_uid, Job.series_version)
                                .join(Job, Job.series_id == Series.id)
                                .where(Series.study_id == study_id)).all()
        results = [results_dir(self.settings, study_uid, uid, version) for uid, version in versions]
        # The readers' verdict SRs stored to the archive (node.verdicts.archive).
        results.append(assessments_dir(self.settings.data_dir, study_uid))
        return [(path, size) for path, size in spool], results

    def _list_files(self, study_id: int, study_uid: str
                    ) -> tuple[list[tuple[str, int]], list[Path]]:
        with self.index.engine.connect() as conn:
            return self._files_of(conn, study_id, study_uid)

    def _remove_rows(self, study_id: int, study_uid: str, cutoff: dt.datetime
                     ) -> tuple[list[tuple[str, int]], list[Path]] | None:
        with self.lock, self.index.engine.begin() as conn:
            if conn.execute(_expired(cutoff, study_id)).first() is None or \
                    conn.execute(_dead_letters(study_uid)).scalar_one():
                return None
            files = self._files_of(conn, study_id, study_uid)
            series = select(Series.id).where(Series.study_id == study_id)
            series_uids = list(conn.execute(select(Series.series_uid).where(
                Series.study_id == study_id)).scalars())
            conn.execute(delete(QaMessage).where(QaMessage.study_id == study_id,
                                                 QaMessage.role == "answer"))
            conn.execute(delete(QaMessage).where(QaMessage.study_id == study_id))
            conn.execute(delete(OutboxItem).where(OutboxItem.study_uid == study_uid))
            conn.execute(delete(AlertItem).where(AlertItem.study_uid == study_uid))
            conn.execute(delete(AlertCheck).where(AlertCheck.job_id.in_(
                select(Job.id).where(Job.series_id.in_(series)))))
            conn.execute(delete(Instance).where(Instance.series_id.in_(series)))
            conn.execute(delete(Job).where(Job.series_id.in_(series)))
            conn.execute(delete(Series).where(Series.study_id == study_id))
            conn.execute(delete(Study).where(Study.id == study_id))
            self.forget_series(series_uids)
        return files

    @staticmethod
    def _remove_files(paths: list[Path], root: Path) -> None:
        folders = set()
        for path in paths:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            folders.add(path.parent)
        for folder in folders:
            _remove_empty_parents(folder, root)

    # -- in serve ---------------------------------------------------------------
    def start(self) -> None:
        if not self.enabled:
            log.info("retention: storage.retention_days = 0, studies are kept%s",
                     f" (unless free disk falls below {self.settings.storage.purge_below_free_mb}"
                     " MB)" if self.settings.storage.purge_below_free_mb else "")
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        interval = self.settings.storage.retention_check_interval_s
        last_pass = float("-inf")
        while True:
            try:
                self.relieve_disk()
                if time.monotonic() - last_pass >= interval:
                    last_pass = time.monotonic()
                    self.run_once()
            except Exception as exc:  # noqa: BLE001 - tried again at the next check
                log.error("retention pass failed: %s: %s", type(exc).__name__, exc)
            if self._stop.wait(min(interval, PRESSURE_CHECK_S)):
                return

    def stop(self, timeout_s: float = 30.0) -> bool:
        """False when a pass was still under way after timeout_s."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, timeout_s))
        return self._thread is None or not self._thread.is_alive()


def _remove_empty_parents(folder: Path, root: Path) -> None:
    """Remove folder and its parents up to (not including) root while they are empty."""
    folder, root = Path(folder), Path(root)
    while folder != root and root in folder.parents:
        try:
            os.rmdir(folder)
        except OSError:  # not empty (something arrived), or gone
            if folder.exists():
                return
        folder = folder.parent
