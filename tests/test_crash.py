"""Durability: SIGKILL in the middle of a series loses nothing acknowledged; SIGTERM stops cleanly."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pydicom
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from support.nodes import FAST, storescu, wait_for


def acknowledged_until_killed(node, paths, kill_after: int) -> list[str]:
    """Send one by one over one association; SIGKILL the node after kill_after successes."""
    ae = AE(ae_title="CRASHTEST")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="TRAUMA_AI")
    assert assoc.is_established
    acked: list[str] = []
    for path in paths:
        ds = pydicom.dcmread(path)
        if len(acked) == kill_after:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(timeout=10)
        if not assoc.is_established:
            break
        status = assoc.send_c_store(ds)
        if status and status.get("Status") == 0x0000:
            acked.append(str(ds.SOPInstanceUID))
    if assoc.is_established:
        assoc.abort()
    return acked


def test_sigkill_mid_series_loses_nothing_acknowledged(node_factory, phantom_factory):
    truth = phantom_factory("crash", slices=60, rows=128, cols=128)
    node = node_factory(FAST)
    workers = [int(pid) for pid in wait_for(lambda: re.findall(
        r"worker \S+/serve-\d+ started \(pid (\d+)\)", node.log()), what="worker start")]
    acked = acknowledged_until_killed(node, truth.paths, kill_after=25)
    assert len(acked) == 25
    node.stop()
    # Its worker processes do not outlive it.
    assert workers and wait_for(lambda: not any(_alive(pid) for pid in workers), timeout=10,
                                what="orphaned workers to exit")

    node.start()  # same data directory and ports
    series = node.wait_series_state(truth.spec.series_uid, {"done"}, timeout=60)
    indexed = node.assert_kept(truth, acked)
    # The series completed after the restart (the timer resumed from the index) and
    # its job processed every instance that is indexed.
    assert series["instances"] == len(indexed)
    assert len(series["jobs"][-1]["result"]["series"]["slices"]) == len(indexed)

    # The rest of the series arrives later: a new version with everything.
    storescu([truth.paths[0].parent], node.dicom_port)
    wait_for(lambda: node.series(truth.spec.series_uid)["version"] == 2, what="version 2")
    series = node.wait_series_state(truth.spec.series_uid, {"done"}, timeout=60)
    assert series["instances"] == 60
    assert len(series["jobs"][-1]["result"]["series"]["slices"]) == 60


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # zombies are gone


def test_sigterm_stops_cleanly(node_factory, phantom_factory):
    truth = phantom_factory("sigterm", slices=12, rows=64, cols=64)
    node = node_factory(FAST)
    storescu([truth.paths[0].parent], node.dicom_port)
    node.wait_series_state(truth.spec.series_uid, {"done"})
    assert node.stop(signal.SIGTERM) == 0
    log = node.log()
    assert "received SIGTERM" in log and log.rstrip().endswith("stopped")
    assert re.search(r"worker \S+/serve-1 stopped", log)
