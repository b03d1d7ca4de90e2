"""Workers: processes that claim jobs and run the analysis.

They run apart from the receiving process, so analysis never slows C-STORE,
and talk to it only through the index and the spool; the same loop can run on
another host against a shared database and spool.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass

from node.store import jobs, outbox  # noqa: F401  (outbox: its table, for job results)
from node.config import Settings, node_identity
from node.store.database import Index
from node.logs import flush_repeated_lines, setup_logging
from node.metrics import WORKER_RESTARTS, Counters
from node.work.prefetch import Prefetcher
from node.work.memory import hold_memory
from node.work.results import RESULTS_OVERHEAD_BYTES, NoRoomForResults, check_room
from node.stopping import STOP_RESERVE_S, exit_by, exit_now, on_stop_signals

log = logging.getLogger("trauma_node.worker")


class JobCutter:
    """In a worker process: SIGTERM or SIGINT stop it. Idle, it leaves its loop at its next
    look; in a job, the job is cut off at once: another thread gives it back to the queue
    and ends the process. (The job's own thread may be deep in a C call; an exception
    raised into it could also land inside a lock, of the database pool say.)"""

    def __init__(self, index: Index, name: str) -> None:
        self.index, self.name = index, name
        self.event = threading.Event()
        self._lock = threading.Lock()
        self._job: int | None = None
        on_stop_signals(self.event)
        threading.Thread(target=self._cut_off, name="job-cutter", daemon=True).start()

    def begin(self, job_id: int) -> bool:
        """A job starts; False when a stop came first (then the job is not to be run)."""
        with self._lock:
            if self.event.is_set():
                return False
            self._job = job_id
            return True

    def end(self) -> None:
        with self._lock:
            self._job = None

    def _cut_off(self) -> None:
        self.event.wait()
        with self._lock:  # held to the end: the job cannot finish meanwhile
            if self._job is None:
                return
            try:
                jobs.give_back(self.index, [self.name])
                log.info("job %d cut off by the stop: back in the queue", self._job)
                jobs.forget_worker(self.index, self.name)
            except Exception as exc:  # noqa: BLE001 - requeued at the next start instead
                log.warning("job %d cut off by the stop, not given back: %s", self._job, exc)
            exit_now(0)


class _DiskRoom:
    """Whether there is room for results, said once each time it changes."""

    def __init__(self) -> None:
        self.needed = RESULTS_OVERHEAD_BYTES  # the last job put back needed this much
        self.short: str | None = None

    def enough(self, settings: Settings) -> bool:
        try:
            check_room(settings, self.needed)
        except NoRoomForResults as exc:
            self.full(str(exc), self.needed)
            return False
        if self.short is not None:
            log.info("free disk is above the floor again: analysis goes on")
            self.short, self.needed = None, RESULTS_OVERHEAD_BYTES
        return True

    def full(self, why: str, needed: int) -> None:
        self.needed = max(self.needed, needed)
        if self.short is None:
            log.error("analysis paused: %s; queued jobs wait until space is freed", why)
        self.short = why


_disk_room = _DiskRoom()


def run_one(index: Index, settings: Settings, name: str, cutter: JobCutter | None = None,
            prefetcher: Prefetcher | None = None) -> bool:
    """Claim and run one job; False when the queue was empty or there is no room for results.
    prefetcher: what this worker decoded of the series while it arrived, if it does."""
    if not _disk_room.enough(settings):
        return False
    job = jobs.claim(index, name)
    if job is None:
        return False
    if cutter is not None and not cutter.begin(job.id):
        jobs.give_back(index, [name])
        return True
    from node.work.job import run_job  # imported late: may load models

    log.info("job %d running: series %s v%d (attempt %d)", job.id, job.series_uid,
             job.series_version, job.attempts)
    started = time.monotonic()
    paths: list = []
    finished: dict | None = None
    try:
        paths = [settings.spool_dir / p for p in jobs.instance_paths(index, job)]
        ahead = prefetcher.take(paths) if prefetcher is not None else None
        if ahead is not None:
            log.info("job %d: %d of %d instances decoded while the series arrived (%s)", job.id,
                     len(ahead.decoded), len(paths), prefetcher.progress())
        result = run_job(settings, index, job, paths, ahead)
    except NoRoomForResults as exc:  # not the job's fault: it waits in the queue
        jobs.give_back(index, [name])
        _disk_room.full(str(exc), exc.needed)
        log.warning("job %d back in the queue: %s", job.id, exc)
        return False
    except Exception as exc:  # a bad series fails its job, never the worker
        log.warning("job %d failed after %.1f s: %s", job.id, time.monotonic() - started, exc)
        log.debug("job %d traceback:\n%s", job.id, traceback.format_exc())
        jobs.fail(index, job.id, f"{type(exc).__name__}: {exc}")
    else:
        jobs.finish(index, job.id, result)
        log.info("job %d done in %.1f s", job.id, time.monotonic() - started)
        finished = result
    finally:
        if prefetcher is not None:
            prefetcher.release(paths)
        if cutter is not None:
            cutter.end()
    if finished is not None:
        _after_finish(index, settings, job, finished)
    return True


def _after_finish(index: Index, settings: Settings, job: jobs.ClaimedJob, result: dict) -> None:
    """Once the job's result is committed: the study's results that awaited this prior, or
    this result that awaited its prior, re-reported with the comparison (node.prior.amendment).
    Never fails the job or the worker: a failure is logged and the next check finishes it."""
    if not settings.prior.enabled:
        return
    try:
        from node.prior.amendment import after_job

        after_job(settings, index, job.study_uid, result)
    except Exception as exc:  # noqa: BLE001
        log.warning("job %d: the check for a re-report with the prior study failed: %s: %s",
                    job.id, type(exc).__name__, exc)


def _exit_with_parent() -> None:
    """A worker must not outlive `serve` (e.g. killed with SIGKILL): its job would run
    twice, once here and once after the restart requeues it."""
    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        while parent.is_alive():
            time.sleep(0.5)
        os._exit(1)  # the interrupted job is requeued when the node starts again

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


HEARTBEAT_S = 10.0  # how often a worker says it is alive (workers.stale_after_s: when not)


class Heartbeat:
    """Beats for one worker in a thread of its own, so that a long job never looks like
    a dead worker; gone from the database when the worker stops cleanly."""

    def __init__(self, index: Index, name: str):
        self.index, self.name = index, name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"beat-{name}", daemon=True)

    def _run(self) -> None:
        while True:
            try:
                jobs.beat(self.index, self.name, os.getpid())
            except Exception as exc:  # noqa: BLE001 - a busy database: beat again later
                log.warning("worker %s heartbeat failed: %s", self.name, type(exc).__name__)
            if self._stop.wait(HEARTBEAT_S):
                return

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *_exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            jobs.forget_worker(self.index, self.name)
        except Exception as exc:  # noqa: BLE001 - it will look silent, and nothing runs
            log.warning("worker %s: heartbeat not removed: %s", self.name, type(exc).__name__)


class OrphanWatch:
    """In `serve`: takes back the running jobs of workers that stopped beating (a worker
    process or a GPU host that died), every minute or so."""

    def __init__(self, settings: Settings, index: Index):
        self.settings, self.index = settings, index
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="orphan-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        workers = self.settings.workers
        while not self._stop.wait(min(60.0, workers.stale_after_s / 2)):
            try:
                jobs.requeue_orphaned(self.index, workers.stale_after_s, workers.max_attempts)
            except Exception as exc:  # noqa: BLE001 - tried again at the next interval
                log.warning("requeue of orphaned jobs failed: %s", type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def worker_main(settings: Settings, name: str, stop: threading.Event | None = None) -> None:
    """Entry point of a worker process (stop None: SIGTERM or SIGINT stop it) or of a worker
    thread of `serve` (stop: the pool's event)."""
    if stop is None:
        _exit_with_parent()
        setup_logging(settings.node.log_level)
    index = Index(settings.database_url, durable=settings.storage.fsync)
    cutter = JobCutter(index, name) if stop is None else None
    try:
        with Heartbeat(index, name):
            _work(settings, cutter.event if cutter else stop, name, index, cutter)
    finally:
        index.close()
        log.info("worker %s stopped", name)


def _work(settings: Settings, stop: threading.Event, name: str, index: Index,
          cutter: JobCutter | None) -> None:
    log.info("worker %s started (pid %d)", name, os.getpid())
    from pipeline.models import preflight

    try:  # load the configured models once, before the first job
        loaded = preflight(settings.pipeline, load=True)
    except Exception as exc:  # jobs will fail with the reason; receiving goes on
        log.error("worker %s could not load its models: %s", name, exc)
    else:
        if loaded:
            log.info("worker %s loaded %s", name, ", ".join(loaded))
    from node.work import job as job_step  # noqa: F401  (now, not in the first job: it takes seconds)
    from dicom_out.outputs import warm_up

    warm_up()  # likewise
    if cutter is not None:  # a worker process (threads of `serve` share its heap)
        hold_memory(settings.workers.held_memory_mb)

    # Worker processes only: in `serve`'s own process (model backends) decoding would
    # compete with receiving for the interpreter.
    wanted = settings.workers.prefetch and settings.workers.prefetch_memory_mb > 0
    prefetcher = Prefetcher(settings, index).start() if wanted and cutter is not None else None
    log.info("worker %s ready%s", name, ", decoding arriving series ahead" if prefetcher else "")
    try:
        while not stop.is_set():
            if not run_one(index, settings, name, cutter, prefetcher):
                stop.wait(settings.workers.poll_interval_s)
    finally:
        if prefetcher is not None:
            prefetcher.stop()


RESTART_DELAY_S = (1.0, 60.0)  # a dead worker's restart: first delay, doubling up to this
STEADY_S = 300.0  # a worker that lived this long before dying restarts after the first delay


@dataclass
class _Slot:
    """One worker process of the pool, and when it is to be restarted after dying."""
    name: str
    process: mp.process.BaseProcess | None = None
    started_at: float = 0.0
    deaths: int = 0  # in a row, each soon after its start
    restart_at: float | None = None


class WorkerPool:
    """Worker processes; threads of `serve` instead when model backends are configured.

    Processes keep analysis from slowing the receiving threads. A model, though,
    is loaded once per process: with model backends the workers run as threads
    of the serve process, so that the pipeline and the Q&A share one copy of each
    model (one GPU's memory), taking turns under its lock. The heavy work then
    runs on the GPU, outside Python's lock.

    A worker process that dies (killed, out of memory) is restarted after a delay that
    doubles while it keeps dying (RESTART_DELAY_S); its job goes back to the queue, and is
    failed once started workers.max_attempts times. Stopping signals the processes
    (never a shared multiprocessing Event: a Condition waits for every sleeper, a child
    killed by the same SIGTERM included) and kills those still running at the deadline.
    """

    def __init__(self, settings: Settings, index: Index, role: str = "serve",
                 count: int | None = None, counters: Counters | None = None):
        """role: serve (the workers `serve` starts) or worker (`trauma-node worker`);
        count: how many (default workers.count); counters: where restarts are counted."""
        from pipeline.models import needed

        self.settings, self.index, self.role = settings, index, role
        self.count = settings.workers.count if count is None else count
        self.counters = counters if counters is not None else Counters()
        self.in_process = bool(needed(settings.pipeline))
        self.ctx = mp.get_context("spawn")  # no forked copies of the SCP's threads
        self.stop_event = threading.Event()  # worker threads; the supervisor
        self.threads: list[threading.Thread] = []
        self.slots: list[_Slot] = []
        self._supervisor: threading.Thread | None = None

    def start(self) -> None:
        node = node_identity(self.settings) if self.role == "serve" else None
        names = [jobs.worker_name(self.role, i + 1, node) for i in range(self.count)]
        if self.in_process:
            for name in names:
                thread = threading.Thread(target=worker_main, name=name, daemon=True,
                                          args=(self.settings, name, self.stop_event))
                thread.start()
                self.threads.append(thread)
            if self.threads:
                log.info("model backends configured: %d worker threads share the models%s",
                         len(self.threads), " with the Q&A" if self.role == "serve" else "")
            return
        self.slots = [_Slot(name) for name in names]
        for slot in self.slots:
            self._spawn(slot)
        if self.slots:
            self._supervisor = threading.Thread(target=self._supervise, name="worker-supervisor",
                                                daemon=True)
            self._supervisor.start()

    def _spawn(self, slot: _Slot) -> None:
        slot.process = self.ctx.Process(target=worker_main, name=slot.name,
                                        args=(self.settings, slot.name), daemon=True)
        slot.process.start()
        slot.started_at, slot.restart_at = time.monotonic(), None

    def _supervise(self) -> None:
        while not self.stop_event.wait(0.5):
            for slot in self.slots:
                try:
                    self._check(slot, time.monotonic())
                except Exception as exc:  # noqa: BLE001 - a busy database: next round
                    log.warning("worker %s: supervision failed: %s", slot.name, exc)

    def _check(self, slot: _Slot, now: float) -> None:
        process = slot.process
        if slot.restart_at is None and process is not None and not process.is_alive():
            code = process.exitcode or 0
            how = f"exited with status {code}"
            if code < 0:
                how = f"was killed by {signal.Signals(-code).name}"
                if code == -signal.SIGKILL:
                    how += ", e.g. out of memory"
            requeued, gave_up = jobs.requeue_of_dead_worker(
                self.index, slot.name, self.settings.workers.max_attempts, f"its worker {how}")
            slot.deaths = 1 if now - slot.started_at >= STEADY_S else slot.deaths + 1
            first, cap = RESTART_DELAY_S
            delay = min(cap, first * 2 ** (slot.deaths - 1))
            slot.restart_at = now + delay
            self.counters.add(WORKER_RESTARTS)
            job = ("its job failed" if gave_up else "its job is back in the queue" if requeued
                   else "it held no job")
            log.error("worker %s (pid %s) %s; %s; restarting it in %.0f s", slot.name,
                      process.pid, how, job, delay)
        elif slot.restart_at is not None and now >= slot.restart_at:
            self._spawn(slot)
            log.info("worker %s restarted (pid %d)", slot.name, slot.process.pid)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every worker within timeout_s; a job cut off goes back to the queue."""
        deadline = time.monotonic() + timeout_s
        self.stop_event.set()
        if self._supervisor is not None:  # no restart from now on
            self._supervisor.join(timeout=max(0.0, min(1.0, timeout_s / 4)))
        processes = [s.process for s in self.slots if s.process is not None]
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: the worker cuts its job off and requeues it
        for worker in [*processes, *self.threads]:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        late = [p for p in processes if p.is_alive()]
        for process in late:
            process.kill()
            process.join(timeout=1.0)
        late_names = [p.name for p in late] + self.busy()
        if late_names and jobs.give_back(self.index, late_names):
            log.warning("workers %s did not stop in time: their jobs are back in the queue",
                        ", ".join(late_names))

    def busy(self) -> list[str]:
        """Worker threads still running a job after stop(): they end with the process."""
        return [t.name for t in self.threads if t.is_alive()]


def run_workers(settings: Settings, count: int) -> None:
    """`trauma-node worker`: analysis workers alone, until SIGINT or SIGTERM.

    They share the node's database and data directory (spool in, results out;
    the node delivers them). Only this host's `worker` jobs left running by a crash
    are requeued here: `serve` and other hosts may be running theirs.
    """
    from pipeline.models import preflight

    models = preflight(settings.pipeline, load=False)  # a missing model fails now
    if settings.database_url.startswith("sqlite"):
        log.warning("the database is SQLite (%s): fine beside `serve` on this host; workers "
                    "on other hosts need a shared database (storage.database_url)",
                    settings.data_dir)
    index = Index(settings.database_url, durable=settings.storage.fsync)
    stopping = threading.Event()
    on_stop_signals(stopping)
    try:
        jobs.requeue_interrupted(index, settings.workers.max_attempts, role="worker")
        pool = WorkerPool(settings, index, role="worker", count=count)
        pool.start()
        log.info("%d worker(s) on %s, data directory %s%s", count, socket.gethostname(),
                 settings.data_dir, f", models {', '.join(models)}" if models else "")
        stopping.wait()
        deadline = time.monotonic() + settings.node.stop_timeout_s
        exit_by(deadline)
        pool.stop(deadline - time.monotonic() - STOP_RESERVE_S)
    finally:
        index.close()
    flush_repeated_lines()
    log.info("stopped")
    exit_now(0)  # as `serve` does (node.service): nothing busy may run into the shutdown
