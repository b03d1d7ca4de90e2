"""A worker that dies is restarted; a series that kills its worker at each attempt is failed
with the reason while the others go on; a series beyond the cost limits is skipped before
anything decodes it."""

from __future__ import annotations

import re

import httpx

from conftest import FAST, TESTS, storescu, wait_for
from metrics_support import one, scrape


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
