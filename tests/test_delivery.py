"""Delivery to a real Orthanc on loopback: backoff, dead letters, retry, no export loop."""

from __future__ import annotations

import subprocess
import sys
import time

import pydicom
import pytest

from support.nodes import ROOT, free_port, wait_for
from node.store import outbox
from node.config import load_settings
from node.work.delivery import Delivery
from node.store.database import Index
from support.orthanc import Orthanc


@pytest.fixture
def setup(tmp_path, phantom_factory):
    pacs = Orthanc(tmp_path / "orthanc", free_port(), free_port())
    env = {"TRAUMA_NODE_PEERS": "[]", "TRAUMA_NODE_DESTINATIONS":
           f'[{{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", '
           f'"port": {pacs.dicom_port}}}]'}
    settings = load_settings("/dev/null", env=env, overrides={
        "node.data_dir": str(tmp_path / "data"), "delivery.base_delay_s": 0.2,
        "delivery.max_delay_s": 1.0, "delivery.max_attempts": 3})
    settings.data_dir.mkdir(parents=True)
    index = Index(settings.database_url)
    truth = phantom_factory("delivery", slices=3, rows=32, cols=32)
    items = [{"study_uid": truth.spec.study_uid, "series_uid": truth.spec.series_uid,
              "series_version": 1, "kind": "seg", "sop_instance_uid": sop, "path": str(path),
              "destination": "pacs"} for sop, path in zip(truth.sop_instance_uids, truth.paths)]
    yield settings, index, pacs, truth, items
    pacs.stop()
    index.close()


def states(index, study_uid):
    return [(d["state"], d["attempts"]) for d in outbox.items_for_study(index, study_uid)]


def test_down_destination_backs_off_then_receives_everything_once(setup):
    settings, index, pacs, truth, items = setup
    delivery = Delivery(settings, index)
    assert outbox.enqueue(index, items) == 3
    assert delivery.deliver_due() == 0  # the PACS is down
    assert states(index, truth.spec.study_uid) == [("pending", 1)] * 3
    assert delivery.deliver_due() == 0  # not due yet: backing off
    assert states(index, truth.spec.study_uid) == [("pending", 1)] * 3
    pacs.start()
    wait_for(lambda: delivery.deliver_due() == 3, timeout=10, what="delivery after backoff")
    assert pacs.instance_uids() == set(truth.sop_instance_uids)
    for sop, path in zip(truth.sop_instance_uids, truth.paths):
        assert pydicom.dcmread(path).PixelData == pydicom.dcmread(
            pydicom.filebase.DicomBytesIO(pacs.file(sop))).PixelData
    # No export loop: sent objects are never sent again, even if enqueued again.
    assert outbox.enqueue(index, items) == 0
    time.sleep(1.2)
    assert delivery.deliver_due() == 0
    assert states(index, truth.spec.study_uid) == [("sent", 2)] * 3


def test_dead_letters_and_retry_command(setup):
    settings, index, pacs, truth, items = setup
    delivery = Delivery(settings, index)
    outbox.enqueue(index, items[:1])
    wait_for(lambda: delivery.deliver_due() == 0 and states(index, truth.spec.study_uid)
             == [("dead", 3)], timeout=15, what="a dead letter")
    pacs.start()
    assert delivery.deliver_due() == 0  # dead letters wait for an admin
    retried = subprocess.run([sys.executable, "-m", "node.cli", "retry", "--config", "/dev/null",
                              "--data-dir", str(settings.data_dir)], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert retried.returncode == 0 and "1 dead letters re-queued" in retried.stdout
    assert delivery.deliver_due() == 1
    assert pacs.instance_uids() == {truth.sop_instance_uids[0]}


def test_exponential_backoff_is_capped():
    from node.config import DeliverySection

    policy = DeliverySection(base_delay_s=2, max_delay_s=60)
    assert [outbox.backoff_s(n, policy) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]


def test_delivery_over_dicom_tls(tmp_path, phantom_factory):
    from test_tls import make_ca, make_leaf

    ca_key, ca_cert, ca_path = make_ca(tmp_path, "hospital-ca")
    pacs_key, pacs_cert = make_leaf(tmp_path, "pacs", ca_key, ca_cert)
    node_key, node_cert = make_leaf(tmp_path, "trauma-node", ca_key, ca_cert)
    pacs = Orthanc(tmp_path / "orthanc", free_port(), free_port(), tls={
        "certificate": str(pacs_cert), "private_key": str(pacs_key), "trusted": str(ca_path)})
    env = {"TRAUMA_NODE_DESTINATIONS": f'[{{"name": "pacs", "ae_title": "PACS", "host": '
           f'"127.0.0.1", "port": {pacs.dicom_port}, "tls": true}}]'}
    settings = load_settings("/dev/null", env=env, overrides={
        "node.data_dir": str(tmp_path / "data"), "tls.certificate": str(node_cert),
        "tls.private_key": str(node_key), "tls.ca_certificates": str(ca_path)})
    settings.data_dir.mkdir(parents=True)
    index = Index(settings.database_url)
    truth = phantom_factory("delivery", slices=3, rows=32, cols=32)
    outbox.enqueue(index, [{"study_uid": truth.spec.study_uid, "series_uid": truth.spec.series_uid,
                            "series_version": 1, "kind": "sr",
                            "sop_instance_uid": truth.sop_instance_uids[0],
                            "path": str(truth.paths[0]), "destination": "pacs"}])
    pacs.start()
    try:
        assert Delivery(settings, index).deliver_due() == 1
        assert pacs.instance_uids() == {truth.sop_instance_uids[0]}
        # Without our client certificate the PACS refuses the connection.
        settings.tls.certificate = settings.tls.private_key = ""
        outbox.enqueue(index, [{"study_uid": truth.spec.study_uid,
                                "series_uid": truth.spec.series_uid, "series_version": 1,
                                "kind": "sr", "sop_instance_uid": truth.sop_instance_uids[1],
                                "path": str(truth.paths[1]), "destination": "pacs"}])
        assert Delivery(settings, index).deliver_due() == 0
        assert pacs.instance_uids() == {truth.sop_instance_uids[0]}
    finally:
        pacs.stop()
        index.close()
