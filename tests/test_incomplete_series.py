"""A series whose receiving was cut short: its results say so, are held, and give way.

A sender's association aborted part-way, or the node killed while receiving: the
version is marked as possibly incomplete, its results say "may be incomplete" and
wait completion.incomplete_hold_s before delivery; a later version arriving in
that time withdraws them, so the PACS only ever gets the complete one. A series
that stated its size and arrived whole is not marked, whatever happened next.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pydicom
from pydicom.filebase import DicomBytesIO
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from support.nodes import FAST, free_port, storescu, wait_for
from support.orthanc import Orthanc
from test_e2e_pacs import COMPREHENSIVE_3D_SR, destination_config

ABORTED = "the association sending it was aborted before it was released"
NODE_STOPPED = "the node stopped while it was being received"
ASSESSABLE = dict(slices=40, rows=128, cols=128, pixel_spacing=(3.125, 3.125),
                  slice_spacing=5.0, blood="small")


def send(files: list[Path], port: int, release: bool = True):
    """Send with pynetdicom; release, or abort as a sender that crashed would. Returns the
    association when neither (left open)."""
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="TRAUMA_AI")
    assert assoc.is_established
    for path in files:
        status = assoc.send_c_store(pydicom.dcmread(path))
        assert status.Status == 0x0000
    if release is None:
        return assoc
    assoc.release() if release else assoc.abort()
    return None


def last_job(node, series_uid: str, version: int, timeout: float = 90.0) -> dict:
    def done():
        s = node.series(series_uid)
        jobs = [j for j in (s or {}).get("jobs", []) if j["series_version"] == version]
        return jobs[-1] if jobs and jobs[-1]["state"] in ("done", "failed") else None
    job = wait_for(done, timeout, what=f"job of {series_uid} v{version}")
    assert job["state"] == "done", job
    return job


def deliveries(node, study_uid: str) -> list[dict]:
    return next(s for s in node.studies() if s["study_uid"] == study_uid)["deliveries"]


def srs_in_orthanc(pacs: Orthanc, study_uid: str) -> list[pydicom.Dataset]:
    found = []
    for orthanc_id in pacs.get("/instances"):
        tags = pacs.get(f"/instances/{orthanc_id}/simplified-tags")
        if tags.get("StudyInstanceUID") == study_uid and tags.get("SOPClassUID") == COMPREHENSIVE_3D_SR:
            found.append(pydicom.dcmread(DicomBytesIO(pacs.file(tags["SOPInstanceUID"]))))
    return found


def sr_text(sr: pydicom.Dataset) -> str:
    texts = []

    def walk(items):
        for item in items:
            if item.ValueType == "TEXT":
                texts.append(item.TextValue)
            walk(item.get("ContentSequence", []))
    walk(sr.ContentSequence)
    return "\n".join(texts)


def test_aborted_series_is_held_then_replaced_or_sent(tmp_path, node_factory, phantom_factory):
    pacs = Orthanc(tmp_path / "orthanc", free_port(), free_port()).start()
    try:
        replaced = phantom_factory("cut-short-resent", **ASSESSABLE)
        alone = phantom_factory("cut-short-alone", **ASSESSABLE, seed=1)
        whole = phantom_factory("whole-then-aborted", **ASSESSABLE, seed=2)
        node = node_factory(destination_config(pacs).replace(
            "[completion]\n", "[completion]\nincomplete_hold_s = 8\n"))

        # A sender aborts after 25 of 40 slices, twice; and one sends all 40 then aborts.
        send(replaced.paths[:25], node.dicom_port, release=False)
        send(alone.paths[:25], node.dicom_port, release=False)
        send(whole.paths, node.dicom_port, release=False)

        job = last_job(node, replaced.spec.series_uid, 1)
        assert job["incomplete_reason"] == ABORTED
        report = job["result"]["report"]
        assert "SERIES MAY BE INCOMPLETE" in report and ABORTED in report
        held = deliveries(node, replaced.spec.study_uid)
        assert held and all(d["state"] == "pending" and d["attempts"] == 0 for d in held), held
        assert srs_in_orthanc(pacs, replaced.spec.study_uid) == []  # held, not sent

        # The sender sends the whole series again within the hold: v2 replaces v1.
        storescu(replaced.paths, node.dicom_port, calling="SCANNER")
        job2 = last_job(node, replaced.spec.series_uid, 2)
        assert job2["incomplete_reason"] is None
        assert "MAY BE INCOMPLETE" not in job2["result"]["report"]
        assert len(job2["result"]["series"]["slices"]) == 40
        wait_for(lambda: srs_in_orthanc(pacs, replaced.spec.study_uid), 30, what="v2's SR in Orthanc")
        rows = deliveries(node, replaced.spec.study_uid)
        v1 = [d for d in rows if d["series_version"] == 1]
        assert v1 and all(d["state"] == "withdrawn" for d in v1), v1
        time.sleep(9)  # past v1's hold: still never sent
        (sr,) = srs_in_orthanc(pacs, replaced.spec.study_uid)
        assert "may be incomplete" not in sr_text(sr)
        assert "PredecessorDocumentsSequence" not in sr  # v1 was never reported
        assert all(d["state"] == "withdrawn" for d in deliveries(node, replaced.spec.study_uid)
                   if d["series_version"] == 1)

        # No later version for the other: its results go after the hold, saying what they are.
        job = last_job(node, alone.spec.series_uid, 1)
        assert job["incomplete_reason"] == ABORTED
        (sr,) = wait_for(lambda: srs_in_orthanc(pacs, alone.spec.study_uid), 40,
                         what="the held SR in Orthanc after the hold")
        assert "Preliminary: this series may be incomplete" in sr_text(sr)
        sent = [d for d in deliveries(node, alone.spec.study_uid) if d["kind"] == "sr"]
        assert sent[0]["state"] == "sent"

        # Stated its size and arrived whole: complete, whatever happened to the association.
        job = last_job(node, whole.spec.series_uid, 1)
        assert job["incomplete_reason"] is None
        assert "MAY BE INCOMPLETE" not in job["result"]["report"]
        assert "may be incomplete" in node.log()  # said for the others, by UID only
    finally:
        pacs.stop()


def test_node_killed_while_receiving(node_factory, phantom_factory):
    truth = phantom_factory("killed-mid-series", **ASSESSABLE, seed=3)
    node = node_factory(FAST)
    assoc = send(truth.paths[:25], node.dicom_port, release=None)  # left open
    node.stop(signal.SIGKILL)
    assoc.abort()
    node.start()
    job = last_job(node, truth.spec.series_uid, 1)
    assert job["incomplete_reason"] == NODE_STOPPED
    assert NODE_STOPPED in job["result"]["report"]
    assert "1 series were still being received when the node stopped" in node.log()
