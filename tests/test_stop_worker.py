"""Stopping `trauma-node worker`: it ends within node.stop_timeout_s on SIGTERM or SIGINT,
to the process alone or to its whole process group, idle or in the middle of a job; the
job cut off goes back to the queue, uncounted, and is done later."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support.nodes import storescu, wait_for
from support.stop_support import (CONFIG, SLOW_JOBS, WAYS, WorkerProcess, assert_job_done, jobs_of,
                          stop_all)


@pytest.fixture
def workers():
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


def test_worker_stops_when_idle_and_mid_job(node_factory, phantom_factory, workers, tmp_path):
    truth = phantom_factory("stop-worker", slices=12, rows=64, cols=64)
    node = node_factory(CONFIG + "[workers]\ncount = 0\n")
    storescu([truth.paths[0].parent], node.dicom_port)
    node.wait_series_state(truth.spec.series_uid, {"queued"})
    node.stop()
    # Each worker gets a copy of the node's data directory with the job queued.
    copies = []
    for i in range(len(WAYS)):
        copy = tmp_path / f"worker-{i}"
        shutil.copytree(node.data_dir, copy / "data")
        copies.append(copy)

    def start_workers(dirs: list[Path], env: dict[str, str]) -> list[WorkerProcess]:
        started = [WorkerProcess(d / "data", node.config_path, d / "worker.log", env).start()
                   for d in dirs]
        workers.extend(started)
        return started

    empty = [tmp_path / f"idle-{i}" for i in range(len(WAYS))]
    for d in empty:
        (d / "data").mkdir(parents=True)
    idle = start_workers(empty, {})
    for w in idle:  # on empty data directories: nothing to do
        wait_for(lambda: "started (pid" in w.log(), timeout=60, what="worker start-up")
    print("seconds to stop, idle:", stop_all(idle))

    busy = start_workers(copies, SLOW_JOBS)
    for w in busy:
        wait_for(lambda: "job 1 running" in w.log(), timeout=60, what="the job to start")
    print("seconds to stop, mid-job:", stop_all(busy))
    for copy in copies:
        assert jobs_of(copy / "data") == [("queued", 0)]

    start_workers(copies, {})
    for copy in copies:
        assert_job_done(copy / "data")
