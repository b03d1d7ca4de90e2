"""The alert outbox: which finished jobs were checked for alerts (alert_checks) and one
row per alert and receiver (alerts), with the result outbox's guarantees
(node.store.outbox, whose mark_sent, mark_failed and retry_dead serve both tables):
retries with backoff, dead letters with the reason, an attempt marked started (committed)
before it goes out.

Only results finished within WINDOW are checked: a node upgraded to alerts, or given a new
receiver, does not page anyone about last week's studies.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from node.config import AlertReceiver
from node.store.database import Index, Job, JobState, Series, Study, utcnow
from node.store.tables import AlertCheck, AlertItem, OutboxState
from node.alerts.triggers import for_receiver

WINDOW = dt.timedelta(hours=1)
BATCH = 50  # finished jobs checked per pass


@dataclass
class FinishedJob:
    id: int
    study_uid: str
    series_uid: str
    series_version: int
    result: dict[str, Any] | None


def unchecked_jobs(index: Index, now: dt.datetime | None = None) -> list[FinishedJob]:
    since = (now or utcnow()) - WINDOW
    with index.engine.connect() as conn:
        rows = conn.execute(
            select(Job.id, Study.study_uid, Series.series_uid, Job.series_version, Job.result)
            .join(Series, Job.series_id == Series.id).join(Study, Series.study_id == Study.id)
            .where(Job.state == JobState.DONE.value, Job.finished_at >= since,
                   Job.id.not_in(select(AlertCheck.job_id)))
            .order_by(Job.id).limit(BATCH)).all()
    return [FinishedJob(*row) for row in rows]


def record(index: Index, job: FinishedJob, met: list[str],
           receivers: list[AlertReceiver]) -> int:
    """The job checked and its alerts queued, in one transaction; returns alerts queued
    (0 also when another node sharing the database checked it first).

    One alert per study and receiver: the study's other series (its phases) and later
    versions alert that receiver again only for a trigger not yet announced to it (a dead
    letter announced nothing), so a two-phase trauma CT pages the team once."""
    try:
        with index.engine.begin() as conn:
            conn.execute(insert(AlertCheck).values(job_id=job.id, fired=",".join(met)))
            rows = []
            for receiver in receivers:
                told = _announced(conn, job.study_uid, receiver.name)
                wanted = for_receiver(met, receiver.triggers)
                if set(wanted) - told:
                    rows.append({
                        "job_id": job.id, "study_uid": job.study_uid,
                        "series_uid": job.series_uid, "series_version": job.series_version,
                        "receiver": receiver.name, "triggers": ",".join(wanted),
                        # Made once, kept with the row: the same at every attempt, new for
                        # a new result (a study sent again after retention is a new one).
                        "alert_id": str(uuid.uuid4())})
            if rows:
                conn.execute(insert(AlertItem), rows)
    except IntegrityError:
        return 0
    return len(rows)


def _announced(conn: Connection, study_uid: str, receiver: str) -> set[str]:
    rows = conn.execute(select(AlertItem.triggers).where(
        AlertItem.study_uid == study_uid, AlertItem.receiver == receiver,
        AlertItem.state != OutboxState.DEAD.value)).scalars()
    return {trigger for triggers in rows for trigger in triggers.split(",")}


def due(index: Index, now: float | None = None) -> list[AlertItem]:
    now = time.time() if now is None else now
    with index.session() as session:
        return list(session.execute(select(AlertItem).where(
            AlertItem.state == OutboxState.PENDING.value,
            AlertItem.next_attempt_at <= now).order_by(AlertItem.id)).scalars())


def claim(index: Index, item: AlertItem, in_flight_s: float) -> bool:
    """Mark the attempt started, committed before it goes out; False when another sender
    (a node sharing the database) took it since it was read, or started one less than
    in_flight_s ago that may still be waiting for its answer. A mark is left only by a
    process that stopped mid-attempt (a crash): after a restart that alert waits
    in_flight_s, then goes again with the same id."""
    started = item.attempt_started_at
    if started is not None and time.time() - started < in_flight_s:
        return False
    with index.engine.begin() as conn:
        return conn.execute(update(AlertItem).where(
            AlertItem.id == item.id, AlertItem.state == OutboxState.PENDING.value,
            AlertItem.attempts == item.attempts,
            AlertItem.attempt_started_at.is_(None) if started is None
            else AlertItem.attempt_started_at == started,
        ).values(attempt_started_at=time.time())).rowcount == 1


def alerts_for_study(index: Index, study_uid: str) -> list[dict]:
    with index.session() as session:
        rows = session.execute(select(AlertItem).where(
            AlertItem.study_uid == study_uid).order_by(AlertItem.id)).scalars()
        return [{"receiver": r.receiver, "alert_id": r.alert_id, "triggers": r.triggers,
                 "series_uid": r.series_uid, "series_version": r.series_version,
                 "state": r.state, "attempts": r.attempts, "last_error": r.last_error}
                for r in rows]
