"""Series completion: when has a series stopped arriving, and is it analysed?

A series is complete when no association is still sending it and it has been
quiet for the configured period, or at once when it stated how many images it
holds (ImagesInAcquisition) and all have arrived. Everything the decision needs
lives in the index, so a restarted node resumes the timers where they were.
A complete series is selected (a job is queued for its version) or skipped
with the reason. Several monitors may run on one database (several nodes sharing it):
each change is guarded by the series' version and instance count as read, so one of
them makes it, once. A complete series waits while another series of its study is
still arriving, up to study_wait_s: the phases of a trauma study (arterial,
portal-venous, delayed) are then analysed one after the other, each later one
compared with those before it (pipeline.multiphase).
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import insert, select, update

from node.config import CompletionSection, SelectionSection
from node.store import senders
from node.store.database import Index, Instance, Job, Series, SeriesState, utcnow
from node.store.receiving import Receiver
from node.store.selection import decide

log = logging.getLogger("trauma_node.completion")


def _incomplete_reason(row) -> str | None:
    """Why the series may lack instances; a series that stated its size and has them all
    is complete whatever cut its receiving short."""
    if row.expected_count and row.instance_count >= row.expected_count:
        return None
    return row.incomplete_reason


class CompletionMonitor:
    def __init__(self, index: Index, receiver: Receiver, completion: CompletionSection,
                 selection: SelectionSection):
        self.index = index
        self.receiver = receiver
        self.completion = completion
        self.selection = selection
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_reap = 0.0

    def _reap_silent_receivers(self, now: float) -> None:
        """Every BEAT_S: receiving processes that died elsewhere no longer hold series open."""
        if now >= self._next_reap:
            self._next_reap = now + senders.BEAT_S
            senders.reap_silent(self.index, self.completion.receiver_stale_after_s)

    def _due(self, now: float) -> list:
        """Series whose completion condition holds now."""
        with self.receiver.lock, self.index.engine.connect() as conn:
            rows = conn.execute(select(
                Series.id, Series.study_id, Series.series_uid, Series.version, Series.instance_count,
                Series.expected_count, Series.last_activity, Series.incomplete_reason,
            ).where(Series.state == SeriesState.RECEIVING.value)).all()
            being_sent = senders.being_sent(conn) if rows else set()
            due = []
            for row in rows:
                all_arrived = (self.completion.trust_image_count and row.expected_count
                               and row.instance_count >= row.expected_count)
                quiet = (row.id not in being_sent
                         and now - row.last_activity >= self.completion.quiet_period_s)
                if all_arrived or quiet:
                    due.append(row)
            # Studies with a series still arriving: their complete series wait for it.
            due_ids = {row.id for row in due}
            arriving = {row.study_id for row in rows if row.id not in due_ids}
            return [row for row in due if row.study_id not in arriving
                    or now - row.last_activity >= self.completion.study_wait_s]

    def check_once(self, now: float | None = None) -> int:
        """Complete every due series; return how many changed state."""
        changed = 0
        now = time.time() if now is None else now
        self._reap_silent_receivers(now)
        for row in self._due(now):
            with self.index.engine.connect() as conn:
                instances = conn.execute(select(Instance.sop_class_uid, Instance.geometry).where(
                    Instance.series_id == row.id, Instance.series_version <= row.version)).all()
            decision = decide(((i.sop_class_uid, i.geometry or {}) for i in instances),
                              self.selection)
            state = SeriesState.QUEUED if decision.selected else SeriesState.SKIPPED
            with self.receiver.lock, self.index.engine.begin() as conn:
                # Only if no instance arrived meanwhile (in this version, or making a new one).
                result = conn.execute(update(Series).where(
                    Series.id == row.id, Series.version == row.version,
                    Series.instance_count == row.instance_count,
                    Series.state == SeriesState.RECEIVING.value,
                ).values(state=state.value, completed_at=utcnow(), skip_reason=decision.reason))
                if result.rowcount != 1:
                    continue
                incomplete = _incomplete_reason(row)
                if decision.selected:
                    job_id = conn.execute(insert(Job).values(
                        series_id=row.id, series_version=row.version, state="queued",
                        incomplete_reason=incomplete).returning(Job.id)).scalar_one()
            changed += 1
            if decision.selected:
                log.info("series %s v%d complete: %d instances, %d slices, queued job %d%s",
                         row.series_uid, row.version, len(instances), decision.slices, job_id,
                         f"; may be incomplete: {incomplete}" if incomplete else "")
            else:
                log.info("series %s v%d complete: %d instances, skipped: %s",
                         row.series_uid, row.version, len(instances), decision.reason)
        return changed

    def _run(self) -> None:
        while not self._stop.wait(self.completion.check_interval_s):
            try:
                self.check_once()
            except Exception:  # keep monitoring; the next pass retries
                log.exception("completion check failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="completion", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
