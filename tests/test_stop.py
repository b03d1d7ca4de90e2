"""Stopping `serve`: it ends within node.stop_timeout_s on SIGTERM or SIGINT, sent to the
process alone or to its whole process group (systemd's KillMode=control-group,
`kill -- -PGID`, Ctrl-C), idle, receiving or in the middle of a job. Nothing acknowledged
is lost; a job cut off goes back to the queue, uncounted, and is done later.

Each test runs one node per way of signalling, side by side, each started in a session of
its own as systemd starts it.
"""

from __future__ import annotations

import threading
import time

import pydicom
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from support.nodes import NodeProcess, storescu, wait_for
from support.stop_support import CONFIG, SLOW_JOBS, WAYS, assert_job_done, jobs_of, stop_all


def start_nodes(node_factory, env: dict[str, str] | None = None) -> list[NodeProcess]:
    nodes = [node_factory(CONFIG, start=False, env=env, name=f"node-{i}", new_session=True)
             for i in range(len(WAYS))]
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        wait_for(node._ready, timeout=120, what="node start-up")
    return nodes


def test_serve_stops_when_idle(node_factory):
    nodes = start_nodes(node_factory)
    print("seconds to stop:", stop_all(nodes))


def test_serve_stops_while_receiving_and_keeps_what_it_acknowledged(node_factory,
                                                                   phantom_factory):
    truth = phantom_factory("stop-receiving", slices=60, rows=64, cols=64)
    nodes = start_nodes(node_factory)
    acked: list[list[str]] = [[] for _ in nodes]

    def send(node: NodeProcess, into: list[str]) -> None:
        ae = AE(ae_title="SLOWSENDER")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="TRAUMA_AI")
        for path in truth.paths:  # slowly: still sending when the stop comes
            ds = pydicom.dcmread(path)
            try:
                status = assoc.send_c_store(ds)
            except RuntimeError:  # aborted by the stop
                return
            if status and status.get("Status") == 0x0000:
                into.append(str(ds.SOPInstanceUID))
            time.sleep(0.1)
        assoc.release()

    senders = [threading.Thread(target=send, args=(n, a), daemon=True)
               for n, a in zip(nodes, acked)]
    for sender in senders:
        sender.start()
    wait_for(lambda: all(len(a) >= 5 for a in acked), timeout=30, what="instances acknowledged")
    print("seconds to stop:", stop_all(nodes))
    for sender in senders:
        sender.join(timeout=15)
    for node, sops in zip(nodes, acked):
        assert 5 <= len(sops) < len(truth.paths)  # cut off mid-series
        node.assert_kept(truth, sops)


def test_serve_stops_mid_job_and_the_job_is_done_later(node_factory, phantom_factory):
    truth = phantom_factory("stop-mid-job", slices=12, rows=64, cols=64)
    nodes = start_nodes(node_factory, env=SLOW_JOBS)
    for node in nodes:
        storescu([truth.paths[0].parent], node.dicom_port)
    for node in nodes:
        wait_for(lambda: "job 1 running" in node.log(), timeout=30, what="the job to start")
    print("seconds to stop:", stop_all(nodes))
    for node in nodes:
        assert "job 1 cut off by the stop: back in the queue" in node.log()
        assert jobs_of(node.data_dir) == [("queued", 0)]  # the attempt was not counted
        for key in SLOW_JOBS:
            node.env.pop(key)
        node.start(wait=False)
    for node in nodes:
        assert_job_done(node.data_dir)


