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
from multiprocessing.synchronize import Event as EventType

from . import jobs, outbox  # noqa: F401  (outbox: its table, for job results)
from .config import Settings
from .index import Index
from .logs import setup_logging

log = logging.getLogger("trauma_node.worker")


def run_one(index: Index, settings: Settings, name: str) -> bool:
    """Claim and run one job; False when the queue was empty."""
    job = jobs.claim(index, name)
    if job is None:
        return False
    from .job_step import run_job  # imported late: may load models

    log.info("job %d running: series %s v%d (attempt %d)", job.id, job.series_uid,
             job.series_version, job.attempts)
    started = time.monotonic()
    try:
        paths = [settings.spool_dir / p for p in jobs.instance_paths(index, job)]
        result = run_job(settings, index, job, paths)
    except Exception as exc:  # a bad series fails its job, never the worker
        log.warning("job %d failed after %.1f s: %s", job.id, time.monotonic() - started, exc)
        log.debug("job %d traceback:\n%s", job.id, traceback.format_exc())
        jobs.fail(index, job.id, f"{type(exc).__name__}: {exc}")
        return True
    jobs.finish(index, job.id, result)
    log.info("job %d done in %.1f s", job.id, time.monotonic() - started)
    return True


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


def worker_main(settings: Settings, stop: EventType | threading.Event, name: str,
                own_process: bool = True) -> None:
    """Entry point of a worker process (or thread, own_process=False)."""
    if own_process:
        _exit_with_parent()
        setup_logging(settings.node.log_level)
    index = Index(settings.database_url, durable=settings.storage.fsync)
    try:
        with Heartbeat(index, name):
            _work(settings, stop, name, index)
    finally:
        index.close()
        log.info("worker %s stopped", name)


def _work(settings: Settings, stop: EventType | threading.Event, name: str, index: Index) -> None:
    log.info("worker %s started (pid %d)", name, os.getpid())
    from pipeline.models import preflight

    try:  # load the configured models once, before the first job
        loaded = preflight(settings.pipeline, load=True)
    except Exception as exc:  # jobs will fail with the reason; receiving goes on
        log.error("worker %s could not load its models: %s", name, exc)
    else:
        if loaded:
            log.info("worker %s loaded %s", name, ", ".join(loaded))
    try:
        while not stop.is_set():
            if not run_one(index, settings, name):
                stop.wait(settings.workers.poll_interval_s)
    except KeyboardInterrupt:
        pass


class WorkerPool:
    """Worker processes; threads of `serve` instead when model backends are configured.

    Processes keep analysis from slowing the receiving threads. A model, though,
    is loaded once per process: with model backends the workers run as threads
    of the serve process, so that the pipeline and the Q&A share one copy of each
    model (one GPU's memory), taking turns under its lock. The heavy work then
    runs on the GPU, outside Python's lock.
    """

    def __init__(self, settings: Settings, role: str = "serve", count: int | None = None):
        """role: serve (the workers `serve` starts) or worker (`trauma-node worker`);
        count: how many (default workers.count)."""
        from pipeline.models import needed

        self.settings = settings
        self.role = role
        self.count = settings.workers.count if count is None else count
        self.in_process = bool(needed(settings.pipeline))
        self.ctx = mp.get_context("spawn")  # no forked copies of the SCP's threads
        self.stop_event = threading.Event() if self.in_process else self.ctx.Event()
        self.workers: list[mp.process.BaseProcess | threading.Thread] = []

    def start(self) -> None:
        for i in range(self.count):
            name = jobs.worker_name(self.role, i + 1)
            args = (self.settings, self.stop_event, name)
            if self.in_process:
                worker = threading.Thread(target=worker_main, name=name, args=(*args, False),
                                          daemon=True)
            else:
                worker = self.ctx.Process(target=worker_main, name=name, args=args, daemon=True)
            worker.start()
            self.workers.append(worker)
        if self.in_process and self.workers:
            log.info("model backends configured: %d worker threads share the models%s",
                     len(self.workers), " with the Q&A" if self.role == "serve" else "")

    def stop(self, grace_s: float = 10.0) -> None:
        """Let running jobs finish within grace_s; a job cut off is requeued at next start."""
        self.stop_event.set()
        deadline = time.monotonic() + grace_s
        for worker in self.workers:
            worker.join(timeout=max(0.1, deadline - time.monotonic()))
            if worker.is_alive() and isinstance(worker, mp.process.BaseProcess):
                worker.terminate()
                worker.join(timeout=5)


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
    try:
        jobs.requeue_interrupted(index, settings.workers.max_attempts, role="worker")
    finally:
        index.close()
    stopping = threading.Event()

    def request_stop(signum, _frame):  # noqa: ANN001
        log.info("received %s", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    pool = WorkerPool(settings, role="worker", count=count)
    pool.start()
    log.info("%d worker(s) on %s, data directory %s%s", count, socket.gethostname(),
             settings.data_dir, f", models {', '.join(models)}" if models else "")
    try:
        stopping.wait()
    finally:
        pool.stop()
        log.info("stopped")
