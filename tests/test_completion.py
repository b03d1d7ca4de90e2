"""Series completion, versions and the job queue, on the index directly (no network)."""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import time

import pytest
from sqlalchemy import insert, select, update

from node.store import jobs, senders
from node.store.completion import CompletionMonitor
from node.config import CompletionSection, SelectionSection
from node.store.headers import InstanceHeader
from node.store.database import Index, Job, JobState, Series, Study, WorkerBeat, utcnow
from node.store.receiving import Receiver
from node.store.spool import Spool
from node.store.tables import ReceiverBeat

STUDY, SERIES = "1.2.3.4", "1.2.3.4.5"


def header(n: int, series: str = SERIES, expected: int | None = None) -> InstanceHeader:
    return InstanceHeader(
        study_uid=STUDY, series_uid=series, sop_uid=f"{series}.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", modality="CT", image_type=["ORIGINAL"],
        rows=64, columns=64, position=[0.0, 0.0, -2.5 * n],
        orientation=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], pixel_spacing=[0.7, 0.7],
        images_in_acquisition=expected)


class Harness:
    def __init__(self, tmp, quiet: float = 5.0):
        self.url = f"sqlite:///{tmp / 'index.sqlite'}"
        self.spool = Spool(tmp / "spool")
        self.quiet = quiet
        self.open()

    def open(self) -> None:
        self.index = Index(self.url)
        self.receiver = Receiver(self.index, self.spool)
        self.monitor = CompletionMonitor(
            self.index, self.receiver, CompletionSection(quiet_period_s=self.quiet),
            SelectionSection(min_slices=3))

    def restart(self) -> None:
        self.index.close()
        self.open()

    def store(self, n: int, assoc: int = 1, **kw):
        return self.receiver.store(header(n, **kw), b"DICM" * 10, "1.2.840.10008.1.2.1", "CT1",
                                   assoc)

    def series(self, uid: str = SERIES) -> Series:
        with self.index.session() as s:
            return s.execute(select(Series).where(Series.series_uid == uid)).scalar_one()

    def jobs(self) -> list[tuple[int, str]]:
        with self.index.engine.connect() as c:
            return [(r.series_version, r.state) for r in
                    c.execute(select(Job.series_version, Job.state).order_by(Job.id))]


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.index.close()


def test_quiet_period_counts_from_the_end_of_the_association(h):
    for n in range(5):
        h.store(n, assoc=7)
    later = time.time() + 60
    assert h.monitor.check_once(now=later) == 0  # association 7 is still sending
    h.receiver.association_closed(7)
    closed = time.time()
    assert h.monitor.check_once(now=closed + 1) == 0  # quiet for 1 s of 5
    assert h.monitor.check_once(now=closed + 5.1) == 1
    assert h.series().state == "queued" and h.jobs() == [(1, "queued")]


def test_all_images_arrived_completes_without_waiting(h):
    for n in range(4):
        h.store(n, assoc=3, expected=4)
    assert h.monitor.check_once(now=time.time()) == 1  # association still open, no quiet
    assert h.jobs() == [(1, "queued")]


def test_restart_resumes_the_timer_from_the_index(h):
    for n in range(5):
        h.store(n)
    h.restart()  # a crash: no association is open any more, the state is in the database
    assert h.series().state == "receiving"
    # The association left behind holds the series open until the restarted node reaps it.
    assert h.monitor.check_once(now=time.time() + 5.1) == 0
    assert senders.reap_earlier(h.index, "local", alive=set()) == 1  # as `serve` starts
    assert h.monitor.check_once(now=time.time() + 5.1) == 1
    assert h.jobs() == [(1, "queued")]
    assert h.series().incomplete_reason == senders.NODE_STOPPED


def test_an_association_held_by_another_receiving_process_keeps_the_series_open(h):
    """Two receiving processes (or nodes) on one database: completion waits for the
    association the other one holds, and for nobody once that one stops beating."""
    other = Receiver(h.index, h.spool, name="other-node:104/4242")
    senders.beat(h.index, other.name)
    for n in range(3):
        h.store(n, assoc=1)
    for n in range(3, 6):
        other.store(header(n), b"DICM" * 10, "1.2.840.10008.1.2.1", "CT2", 9)
    h.receiver.association_closed(1)
    assert h.series().instance_count == 6
    assert h.monitor.check_once(now=time.time() + 60) == 0  # the other is still sending
    with h.index.engine.begin() as conn:  # the other process stops beating: it died
        conn.execute(update(ReceiverBeat).values(last_seen=utcnow() - dt.timedelta(minutes=5)))
    assert h.monitor.check_once(now=time.time() + 70) == 1
    assert h.series().incomplete_reason == senders.NODE_STOPPED
    assert h.jobs() == [(1, "queued")]


def test_late_instances_make_a_new_version_and_duplicates_do_not(h):
    for n in range(5):
        h.store(n)
    h.receiver.association_closed(1)
    h.monitor.check_once(now=time.time() + 10)
    assert h.store(2).stored is False  # a duplicate changes nothing
    h.receiver.association_closed(1)
    assert h.series().version == 1 and h.series().state == "queued"
    result = h.store(5, assoc=2)
    assert result.stored and result.series_version == 2
    assert h.series().state == "receiving" and h.series().instance_count == 6
    h.receiver.association_closed(2)
    h.monitor.check_once(now=time.time() + 10)
    assert h.jobs() == [(1, "queued"), (2, "queued")]
    job1 = jobs.ClaimedJob(0, h.series().id, SERIES, STUDY, 1, 0)
    job2 = jobs.ClaimedJob(0, h.series().id, SERIES, STUDY, 2, 0)
    assert len(jobs.instance_paths(h.index, job1)) == 5
    assert len(jobs.instance_paths(h.index, job2)) == 6


def test_a_series_that_fails_selection_is_skipped_with_its_reason(h):
    for n in range(2):
        h.store(n, series="9.9")
    h.receiver.association_closed(1)
    h.monitor.check_once(now=time.time() + 10)
    s = h.series("9.9")
    assert s.state == "skipped" and s.skip_reason == "2 slices, fewer than the 3 required"
    assert h.jobs() == []


def _claim_all(url: str, name: str, out) -> None:
    index = Index(url)
    claimed = []
    while (job := jobs.claim(index, name)) is not None:
        claimed.append(job.id)
    out.put(claimed)


def test_workers_in_four_processes_claim_each_job_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.sqlite'}"
    index = Index(url)
    with index.engine.begin() as c:
        for i in range(60):  # one study each: a study's jobs are claimed one at a time
            study = c.execute(insert(Study).values(study_uid=f"1.2.{i}").returning(Study.id)).scalar_one()
            sid = c.execute(insert(Series).values(study_id=study, series_uid=f"1.2.{i}.1",
                                                  state="queued").returning(Series.id)).scalar_one()
            c.execute(insert(Job).values(series_id=sid, series_version=1, state="queued"))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(url, f"w{i}", out)) for i in range(4)]
    for p in procs:
        p.start()
    claimed = [job for _ in procs for job in out.get(timeout=120)]
    for p in procs:
        p.join(timeout=30)
    assert sorted(claimed) == list(range(1, 61))  # every job, none twice


def test_a_restart_requeues_only_the_jobs_of_its_own_host_and_role(tmp_path):
    """`serve` restarting must not take back jobs that `trauma-node worker`, here or on
    another host sharing the database, is running now."""
    index = Index(f"sqlite:///{tmp_path / 'index.sqlite'}")
    here = jobs.worker_name("serve", 1).split("/")[0]
    names = {"serve here": jobs.worker_name("serve", 1),
             "worker here": jobs.worker_name("worker", 2),
             "serve elsewhere": "gpu-host-7/serve-1", "worker elsewhere": "gpu-host-7/worker-1",
             "older version": "worker-1", "prefix of ours": f"{here}x/serve-1"}
    with index.session() as session, session.begin():
        study = Study(study_uid="1.2")
        session.add(study)
        for i, name in enumerate(names.values()):
            series = Series(study=study, series_uid=f"1.2.{i}", state="queued")
            session.add(Job(series=series, series_version=1, state=JobState.RUNNING.value,
                            worker=name, attempts=1))

    def running() -> set[str]:
        with index.session() as session:
            workers = set(session.execute(select(Job.worker).where(
                Job.state == JobState.RUNNING.value)).scalars())
            return {key for key, name in names.items() if name in workers}

    assert jobs.requeue_interrupted(index, max_attempts=3, role="serve") == (2, 0)
    assert running() == {"worker here", "serve elsewhere", "worker elsewhere", "prefix of ours"}
    assert jobs.requeue_interrupted(index, max_attempts=3, role="worker") == (1, 0)
    assert running() == {"serve elsewhere", "worker elsewhere", "prefix of ours"}
    index.close()


def test_jobs_of_workers_that_stopped_beating_are_taken_back(tmp_path):
    """A GPU host that dies mid-job: `serve` requeues its job once the worker has been
    silent for workers.stale_after_s; jobs of workers still beating are left alone."""
    index = Index(f"sqlite:///{tmp_path / 'index.sqlite'}")
    now = utcnow()
    jobs.beat(index, "gpu-1/worker-1", 101)  # beating now
    jobs.beat(index, "gpu-2/worker-1", 102)
    with index.engine.begin() as conn:  # gpu-2 went silent five minutes ago
        conn.execute(update(WorkerBeat).where(WorkerBeat.name == "gpu-2/worker-1")
                     .values(last_seen=now - dt.timedelta(minutes=5)))
    started = {"alive": ("gpu-1/worker-1", now - dt.timedelta(hours=1)),
               "silent": ("gpu-2/worker-1", now - dt.timedelta(minutes=6)),
               "never beat, long": ("worker-1", now - dt.timedelta(hours=1)),
               "never beat yet": ("gpu-3/worker-1", now - dt.timedelta(seconds=5))}
    with index.session() as session, session.begin():
        study = Study(study_uid="1.2")
        for i, (worker, at) in enumerate(started.values()):
            session.add(Job(series=Series(study=study, series_uid=f"1.2.{i}", state="queued"),
                            series_version=1, state=JobState.RUNNING.value, worker=worker,
                            started_at=at, attempts=1))
    assert jobs.requeue_orphaned(index, stale_after_s=120, max_attempts=3, now=now) == (2, 0)
    with index.session() as session:
        running = set(session.execute(select(Job.worker).where(
            Job.state == JobState.RUNNING.value)).scalars())
    assert running == {"gpu-1/worker-1", "gpu-3/worker-1"}
    assert jobs.workers_alive(index, stale_after_s=120) == ["gpu-1/worker-1"]
    jobs.forget_worker(index, "gpu-1/worker-1")  # a clean stop
    assert jobs.workers_alive(index, stale_after_s=120) == []
    index.close()


def test_interrupted_jobs_are_requeued_and_poison_jobs_given_up(h):
    for n in range(5):
        h.store(n)
    h.receiver.association_closed(1)
    h.monitor.check_once(now=time.time() + 10)
    job = jobs.claim(h.index, "w1")
    assert job is not None and job.attempts == 1
    assert jobs.requeue_interrupted(h.index, max_attempts=3) == (1, 0)
    assert h.jobs() == [(1, "queued")]
    jobs.claim(h.index, "w1")  # crashes again: attempt 2
    jobs.requeue_interrupted(h.index, max_attempts=3)
    third = jobs.claim(h.index, "w1")
    assert third.attempts == 3
    assert jobs.requeue_interrupted(h.index, max_attempts=3) == (0, 1)
    assert h.jobs() == [(1, "failed")]


def test_a_complete_phase_waits_for_the_study_s_next_phase_then_both_go(h):
    """The arterial phase is complete while the portal phase still arrives: it waits (at
    most study_wait_s), then both are queued, the earlier first."""
    arterial, portal = "1.2.3.4.10", "1.2.3.4.11"
    for n in range(4):
        h.store(n, assoc=1, series=arterial, expected=4)  # all arrived
    h.store(0, assoc=2, series=portal)  # association 2 still sending the next phase
    now = time.time()
    assert h.monitor.check_once(now=now) == 0
    assert h.series(arterial).state == "receiving" and h.jobs() == []
    for n in range(1, 4):
        h.store(n, assoc=2, series=portal)
    h.receiver.association_closed(2)
    assert h.monitor.check_once(now=time.time() + 5.1) == 2  # portal quiet: both complete
    with h.index.engine.connect() as c:
        queued = [r.series_uid for r in c.execute(
            select(Series.series_uid).join(Job, Job.series_id == Series.id).order_by(Job.id))]
    assert queued == [arterial, portal]


def test_the_wait_for_other_phases_is_bounded(h):
    arterial, portal = "1.2.3.4.20", "1.2.3.4.21"
    for n in range(4):
        h.store(n, assoc=1, series=arterial, expected=4)
    h.store(0, assoc=2, series=portal)  # a sender that never finishes
    wait = CompletionSection().study_wait_s
    assert h.monitor.check_once(now=time.time() + wait - 1) == 0
    assert h.monitor.check_once(now=time.time() + wait + 1) == 1
    assert h.series(arterial).state == "queued"


def test_the_phases_of_a_study_are_analysed_one_after_the_other(tmp_path):
    index = Index(f"sqlite:///{tmp_path / 'index.sqlite'}")
    with index.engine.begin() as c:
        study = c.execute(insert(Study).values(study_uid="1.3").returning(Study.id)).scalar_one()
        other = c.execute(insert(Study).values(study_uid="1.4").returning(Study.id)).scalar_one()
        for uid, study_id in (("1.3.1", study), ("1.3.2", study), ("1.4.1", other)):
            sid = c.execute(insert(Series).values(study_id=study_id, series_uid=uid,
                                                  state="queued").returning(Series.id)).scalar_one()
            c.execute(insert(Job).values(series_id=sid, series_version=1, state="queued"))
    first = jobs.claim(index, "w1")
    second = jobs.claim(index, "w2")  # the other study's, not the same study's second phase
    assert (first.series_uid, second.series_uid) == ("1.3.1", "1.4.1")
    assert jobs.claim(index, "w3") is None
    jobs.finish(index, first.id, {"findings": "of the first phase"})
    third = jobs.claim(index, "w3")
    assert third.series_uid == "1.3.2"
    assert jobs.other_phases(index, third) == [{"findings": "of the first phase"}]
    index.close()
