"""The job queue in the index: claim atomically, finish, requeue after a crash.

A claim is a conditional UPDATE (state still 'queued'), so two workers, in
two processes or on two hosts sharing a database, never get the same job.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
from dataclasses import dataclass

from sqlalchemy import and_, delete, func, insert, or_, select, update

from node.store.database import Index, Instance, Job, JobState, Series, WorkerBeat, utcnow

log = logging.getLogger("trauma_node.jobs")


@dataclass
class ClaimedJob:
    id: int
    series_id: int
    series_uid: str
    study_uid: str
    series_version: int
    attempts: int
    incomplete_reason: str | None = None  # its results are held (node.work.job)


def claim(index: Index, worker: str) -> ClaimedJob | None:
    """Take the oldest queued job, or None when there is none.

    One job per study at a time: the phases of a study are analysed one after the
    other, so that each later one is compared with those before it.
    """
    busy_studies = select(Series.study_id).join(Job, Job.series_id == Series.id).where(
        Job.state == JobState.RUNNING.value)
    for _ in range(10):  # another worker may win the race for a candidate
        with index.engine.begin() as conn:
            candidate = conn.execute(select(Job.id).join(Series, Job.series_id == Series.id).where(
                Job.state == JobState.QUEUED.value, Series.study_id.not_in(busy_studies),
            ).order_by(Job.id).limit(1)).scalar()
            if candidate is None:
                return None
            won = conn.execute(update(Job).where(
                Job.id == candidate, Job.state == JobState.QUEUED.value,
            ).values(state=JobState.RUNNING.value, worker=worker, started_at=utcnow(),
                     attempts=Job.attempts + 1)).rowcount == 1
            if not won:
                continue
        with index.session() as session:
            job = session.get(Job, candidate)
            series = job.series
            return ClaimedJob(job.id, series.id, series.series_uid, series.study.study_uid,
                              job.series_version, job.attempts, job.incomplete_reason)
    return None


def instance_paths(index: Index, job: ClaimedJob) -> list[str]:
    """Spool-relative paths of the instances that make up the job's series version."""
    with index.engine.connect() as conn:
        return list(conn.execute(select(Instance.path).where(
            Instance.series_id == job.series_id,
            Instance.series_version <= job.series_version).order_by(Instance.id)).scalars())


def other_phases(index: Index, job: ClaimedJob) -> list[dict]:
    """findings.json of the study's other series, as their latest finished job left it."""
    with index.engine.connect() as conn:
        rows = conn.execute(select(Job.series_id, Job.result).join(Series, Job.series_id == Series.id).where(
            Series.study_id == select(Series.study_id).where(Series.id == job.series_id).scalar_subquery(),
            Job.series_id != job.series_id, Job.state == JobState.DONE.value,
        ).order_by(Job.id)).all()
    latest = {row.series_id: row.result for row in rows if row.result}
    return list(latest.values())


def latest_version(index: Index, job: ClaimedJob) -> int:
    """The job's series' current version (later than the job's once instances came after)."""
    with index.engine.connect() as conn:
        return conn.execute(select(Series.version).where(Series.id == job.series_id)).scalar_one()


def earlier_incomplete_versions(index: Index, job: ClaimedJob) -> list[int]:
    """The versions of the job's series before its own that were queued as possibly incomplete."""
    with index.engine.connect() as conn:
        return list(conn.execute(select(Job.series_version).where(
            Job.series_id == job.series_id, Job.series_version < job.series_version,
            Job.incomplete_reason.is_not(None))).scalars())


def finish(index: Index, job_id: int, result: dict) -> None:
    with index.engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == job_id).values(
            state=JobState.DONE.value, finished_at=utcnow(), result=result, error=None))


def fail(index: Index, job_id: int, error: str) -> None:
    with index.engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == job_id).values(
            state=JobState.FAILED.value, finished_at=utcnow(), error=error))


def worker_name(role: str, number: int, node: str | None = None) -> str:
    """host/role-N, or node/role-N for the workers of `serve` (node.config.node_identity,
    so that two nodes on one host tell theirs apart): which jobs a process may requeue
    after a crash (requeue_interrupted)."""
    return f"{node or socket.gethostname()[:40]}/{role}-{number}"


def requeue_interrupted(index: Index, max_attempts: int, role: str | None = None,
                        node: str | None = None) -> tuple[int, int]:
    """At start-up: the jobs this host's workers of this role left running go back to the queue.

    Only those: workers on other hosts sharing the database, or a `trauma-node worker`
    beside `serve`, may be running theirs right now. role=None takes every running job
    (one process alone on its database). Jobs named by versions before host/role names
    are taken by any role. A job that was already started max_attempts times is failed
    instead, so one series that crashes the worker cannot crash it forever.
    Returns (requeued, given up).
    """
    running = Job.state == JobState.RUNNING.value
    if role is not None:
        prefix = worker_name(role, 0, node)[:-1]
        running = and_(running, or_(func.substr(Job.worker, 1, len(prefix)) == prefix,
                                    Job.worker.is_(None), ~Job.worker.contains("/")))
    requeued, gave_up = _take_back(index, running, max_attempts)
    if requeued or gave_up:
        log.info("start-up: %d interrupted jobs requeued, %d given up", requeued, gave_up)
    return requeued, gave_up


def requeue_orphaned(index: Index, stale_after_s: float, max_attempts: int,
                     now: dt.datetime | None = None) -> tuple[int, int]:
    """Running jobs whose worker stopped beating (its process or host died) go back to
    the queue; so do jobs running longer than stale_after_s by a worker that never beat
    (versions before heartbeats). Returns (requeued, given up)."""
    cutoff = (now or utcnow()) - dt.timedelta(seconds=stale_after_s)
    alive = select(WorkerBeat.name).where(WorkerBeat.last_seen >= cutoff)
    silent = select(WorkerBeat.name).where(WorkerBeat.last_seen < cutoff)
    orphaned = and_(Job.state == JobState.RUNNING.value, or_(
        Job.worker.in_(silent),
        and_(or_(Job.worker.is_(None), Job.worker.not_in(alive)), Job.started_at < cutoff)))
    requeued, gave_up = _take_back(index, orphaned, max_attempts)
    if requeued or gave_up:
        log.warning("%d jobs of workers silent for %.0f s requeued, %d given up", requeued,
                    stale_after_s, gave_up)
    return requeued, gave_up


def requeue_of_dead_worker(index: Index, worker: str, max_attempts: int, why: str
                           ) -> tuple[int, int]:
    """The running job of a worker process that died goes back to the queue, or is failed
    when it was started max_attempts times (it may be what kills the worker)."""
    running = and_(Job.state == JobState.RUNNING.value, Job.worker == worker)
    return _take_back(index, running, max_attempts, why)


def give_back(index: Index, workers: list[str]) -> int:
    """The running jobs of these workers, cut off by a stop, go back to the queue; the
    attempt is not counted (the job did not fail). Returns how many."""
    if not workers:
        return 0
    with index.engine.begin() as conn:
        return conn.execute(update(Job).where(
            Job.state == JobState.RUNNING.value, Job.worker.in_(workers),
        ).values(state=JobState.QUEUED.value, worker=None,
                 attempts=Job.attempts - 1)).rowcount  # claim counted it


def _take_back(index: Index, running, max_attempts: int,
               why: str = "worker crashed or was killed") -> tuple[int, int]:
    with index.engine.begin() as conn:
        gave_up = conn.execute(update(Job).where(running, Job.attempts >= max_attempts).values(
            state=JobState.FAILED.value, finished_at=utcnow(),
            error=f"interrupted {max_attempts} times ({why})")).rowcount
        requeued = conn.execute(update(Job).where(running).values(
            state=JobState.QUEUED.value, worker=None)).rowcount
    return requeued, gave_up


def beat(index: Index, worker: str, pid: int) -> None:
    """This worker is alive (node.work.worker calls it every HEARTBEAT_S)."""
    with index.engine.begin() as conn:
        if not conn.execute(update(WorkerBeat).where(WorkerBeat.name == worker).values(
                pid=pid, last_seen=utcnow())).rowcount:
            conn.execute(insert(WorkerBeat).values(name=worker, pid=pid))


def forget_worker(index: Index, worker: str) -> None:
    """A worker that stops cleanly leaves nothing to take back."""
    with index.engine.begin() as conn:
        conn.execute(delete(WorkerBeat).where(WorkerBeat.name == worker))


def workers_alive(index: Index, stale_after_s: float) -> list[str]:
    cutoff = utcnow() - dt.timedelta(seconds=stale_after_s)
    with index.engine.connect() as conn:
        return list(conn.execute(select(WorkerBeat.name).where(
            WorkerBeat.last_seen >= cutoff).order_by(WorkerBeat.name)).scalars())

