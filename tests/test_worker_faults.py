"""A worker that dies is restarted; a series that kills its worker at each attempt is failed
with the reason while the others go on; a series beyond the cost limits is skipped before
anything decodes it."""

from __future__ import annotations

import re
import time

import httpx

from support.nodes import FAST, TESTS, storescu, wait_for
from support.metrics_support import one, scrape


def test_a_dead_worker_is_restarted_and_a_series_that_keeps_killing_it_fails(
        node_factory, phantom_factory):
    killer = phantom_factory("kills-its-worker", slices=12, rows=64, cols=64)
    fine = phantom_factory("after-the-killer", slices=12, rows=64, cols=64)
    too_big = phantom_factory("too-big", slices=12, rows=96, cols=96)
    node = node_factory(FAST, env={
        "PYTHONPATH": str(TESTS / "fault_hooks"),  # a job of `killer` SIGKILLs its worker
        "TRAUMA_TEST_KILL_SERIES": killer.spec.series_uid,
        "TRAUMA_NODE_WORKERS_MAX_ATTEMPTS": "2",
        "TRAUMA_NODE_SELECTION_MAX_VOXELS": str(64 * 64 * 12)})
    for truth in (killer, fine, too_big):
        storescu([truth.paths[0].parent], node.dicom_port)

    skipped = node.wait_series_state(too_big.spec.series_uid, {"skipped"})
    assert skipped["skip_reason"] == ("110,592 voxels, more than selection.max_voxels "
                                      "(49,152)")
    done = node.wait_series_state(fine.spec.series_uid, {"done"}, timeout=90)
    assert done["jobs"][-1]["state"] == "done"
    (job,) = node.series(killer.spec.series_uid)["jobs"]
    assert job["state"] == "failed"
    assert job["error"] == ("interrupted 2 times (its worker was killed by SIGKILL, e.g. out "
                            "of memory)")

    log = node.log()
    deaths = re.findall(r"worker \S+/serve-1 \(pid \d+\) was killed by SIGKILL, e.g. out of "
                        r"memory; (.*); restarting it in (\d+) s", log)
    assert deaths == [("its job is back in the queue", "1"), ("its job failed", "2")]
    assert len(re.findall(r"worker \S+/serve-1 restarted \(pid \d+\)", log)) == 2

    with httpx.Client(timeout=10) as client:
        def restarted_one_alive():
            figures = scrape(client, node.url)
            return figures if one(figures, "trauma_node_workers_alive", role="serve") else None
        figures = wait_for(restarted_one_alive, what="the restarted worker to beat")
    assert one(figures, "trauma_node_worker_restarts_total") == 2


def test_results_respect_the_free_disk_floor(tmp_path, node_factory, phantom_factory):
    """Results that would take the disk below storage.min_free_disk_mb are not written: the
    job waits in the queue, analysis pauses with one line saying why, and goes on once
    there is room. The disk's free space is what a file says (a fault hook)."""
    truth = phantom_factory("results-disk-floor", slices=12, rows=64, cols=64)
    told = tmp_path / "results-free-bytes"
    floor, overhead = 10 * 2**20, 32 * 2**20  # FAST's min_free_disk_mb; results.RESULTS_OVERHEAD_BYTES
    labels = 12 * 64 * 64
    # Room for a job to start (the overhead) but not for this one's results (labels twice more).
    told.write_text(str(floor + overhead + labels))
    node = node_factory(FAST, env={"PYTHONPATH": str(TESTS / "fault_hooks"),
                                   "TRAUMA_TEST_RESULTS_FREE_FILE": str(told)})
    storescu([truth.paths[0].parent], node.dicom_port)
    wait_for(lambda: "back in the queue: " in node.log(), 60, what="the job put back")
    (job,) = node.series(truth.spec.series_uid)["jobs"]
    assert job["state"] == "queued" and job["attempts"] == 0
    assert not (node.data_dir / "results").exists() or not any((node.data_dir / "results").rglob("*.dcm"))
    log = node.log()
    assert log.count("analysis paused: ") == 1
    assert "below storage.min_free_disk_mb (10 MB)" in log
    time.sleep(2)  # paused: the job is not tried again and again
    assert node.log().count("back in the queue: ") == 1

    told.unlink()  # space freed
    done = node.wait_series_state(truth.spec.series_uid, {"done"}, timeout=60)
    assert done["jobs"][-1]["state"] == "done"
    assert "free disk is above the floor again: analysis goes on" in node.log()
