"""A delivery cut off by a crash (SIGKILL) is not sent twice to a destination that has it.

The delivering process kills itself (tests/fault_hooks) right after Orthanc acknowledged a
C-STORE and before the outbox recorded it sent, or right after the attempt was recorded as
started and before its C-STORE went out. Orthanc lists every C-STORE it receives, a second
copy of one too (Orthanc.receptions), so a double send shows.
"""

from __future__ import annotations

import logging
from collections import Counter

import httpx
import pytest

from support.deliveries import in_doubt, killed_delivering, outbox_rows
from support.nodes import AUTH, FAST, TESTS, free_port, storescu, wait_for
from support.metrics_support import figures_of, one
from node import metrics
from node.store import outbox
from node.config import load_settings
from node.work.delivery import Delivery
from node.store.database import Index
from support.orthanc import Orthanc

CALLING_AE = "TRAUMA_AI"  # delivery.calling_ae_title


def pacs_for(tmp_path, answers_c_find: bool = True) -> Orthanc:
    """Orthanc answers C-FIND only from a modality it knows: our calling AE title."""
    return Orthanc(tmp_path / "orthanc", free_port(), free_port(), modalities={
        "trauma": [CALLING_AE, "127.0.0.1", free_port()]} if answers_c_find else {}).start()


def destination(pacs: Orthanc, verify: str) -> str:
    return (f'[{{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", '
            f'"port": {pacs.dicom_port}, "verify_interrupted": "{verify}"}}]')


@pytest.mark.parametrize("verify, answers_c_find, when, copies_of_first, outcome", [
    # The issue: acknowledged, then killed before it was recorded; sent again unasked.
    ("resend", True, "acknowledged", 2, "unverified"),
    # Asked first: the destination has it, so it is not sent again.
    ("c-find", True, "acknowledged", 1, "present"),
    # Killed before the C-STORE went out: the destination lacks it, so it is sent.
    ("c-find", True, "started", 1, "absent"),
    # A destination that does not answer C-FIND gets it again, and the log says so.
    ("c-find", False, "acknowledged", 2, "unverified"),
])
def test_an_attempt_cut_off_by_a_crash(tmp_path, phantom_factory, caplog, verify,
                                       answers_c_find, when, copies_of_first, outcome):
    pacs = pacs_for(tmp_path, answers_c_find)
    try:
        env = {"TRAUMA_NODE_PEERS": "[]",
               "TRAUMA_NODE_DESTINATIONS": destination(pacs, verify)}
        settings = load_settings("/dev/null", env=env, overrides={
            "node.data_dir": str(tmp_path / "data")})
        settings.data_dir.mkdir(parents=True)
        index = Index(settings.database_url)
        truth = phantom_factory("interrupted", slices=3, rows=32, cols=32)
        outbox.enqueue(index, outbox_rows(truth))
        first, *others = [sop for _, sop in sorted(zip(map(str, truth.paths),
                                                       truth.sop_instance_uids))]  # sent so

        killed_delivering(settings.data_dir, env["TRAUMA_NODE_DESTINATIONS"], when)
        assert pacs.receptions() == ([first] if when == "acknowledged" else [])
        assert in_doubt(settings.data_dir) == [("pending", True)] + [("pending", False)] * 2

        delivery = Delivery(settings, index)  # the restarted node
        with caplog.at_level(logging.INFO, logger="trauma_node.delivery"):
            assert delivery.deliver_due() == 3 - (outcome == "present")
        received = Counter(pacs.receptions())
        assert received == {first: copies_of_first, **{sop: 1 for sop in others}}
        assert pacs.instance_uids() == set(truth.sop_instance_uids)
        assert in_doubt(settings.data_dir) == [("sent", False)] * 3
        assert delivery.counters.value(metrics.INTERRUPTED_DELIVERIES, outcome) == 1
        expected_log = {
            "present": f"{first} confirmed present at pacs after an interrupted attempt",
            "absent": f"{first} not at pacs after an interrupted attempt: sending it again",
            "unverified": "it may receive them twice"}[outcome]
        assert expected_log in caplog.text
        if not answers_c_find:
            assert "pacs did not answer C-FIND" in caplog.text
        index.close()
    finally:
        pacs.stop()


def test_serve_killed_between_the_acknowledgement_and_its_record(
        tmp_path, node_factory, phantom_factory):
    """SIGKILL of `serve` itself: after the restart the PACS holds each result once."""
    pacs = pacs_for(tmp_path)
    try:
        node = node_factory(FAST + f"""
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs.dicom_port}
objects = ["sr", "pdf"]
""", env={"PYTHONPATH": str(TESTS / "fault_hooks"),
          "TRAUMA_TEST_KILL_DELIVERY": "acknowledged"})
        truth = phantom_factory("interrupted-serve", slices=12, rows=64, cols=64)
        storescu([truth.paths[0].parent], node.dicom_port)
        assert node.proc.wait(timeout=120) == -9  # killed in the middle of its delivery
        node.stop()
        assert len(pacs.receptions()) == 1
        rows = in_doubt(node.data_dir)  # the other was not tried
        assert sorted(rows) == [("pending", False), ("pending", True)]

        del node.env["TRAUMA_TEST_KILL_DELIVERY"]
        node.start()
        wait_for(lambda: in_doubt(node.data_dir) == [("sent", False)] * len(rows), timeout=60,
                 what="delivery after the restart")
        received = Counter(pacs.receptions())
        assert len(received) == len(rows) and set(received.values()) == {1}, received
        assert "confirmed present at pacs after an interrupted attempt" in node.log()
        figures = figures_of(httpx.get(f"{node.url}/metrics", headers=AUTH, timeout=10).text)
        assert one(figures, "trauma_node_interrupted_deliveries_total", outcome="present") == 1
        assert one(figures, "trauma_node_interrupted_deliveries_total", outcome="unverified") == 0
    finally:
        pacs.stop()

