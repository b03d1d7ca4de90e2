"""End to end: storescu -> node -> pipeline -> SEG + SR -> a real Orthanc PACS."""

from __future__ import annotations

import json
import time
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pydicom
from pydicom.filebase import DicomBytesIO

from support.nodes import FAST, free_port, storescu, wait_for
from support.metrics_support import one, scrape
from support.orthanc import Orthanc

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
VOLUME = hd.sr.CodedConcept("118565006", "SCT", "Volume")


def destination_config(pacs: Orthanc, objects: tuple[str, ...] = ("seg", "sr")) -> str:
    return FAST + f"""
[delivery]
base_delay_s = 0.5
max_delay_s = 1.0

[[destinations]]
name = "pacs"
ae_title = "{pacs.aet}"
host = "127.0.0.1"
port = {pacs.dicom_port}
objects = {json.dumps(list(objects))}
"""


def results_in_orthanc(pacs: Orthanc, study_uid: str) -> dict[str, pydicom.Dataset]:
    """The SEG and SR Orthanc holds in the study, by SOP class."""
    found = {}
    for orthanc_id in pacs.get("/instances"):
        tags = pacs.get(f"/instances/{orthanc_id}/simplified-tags")
        if tags.get("StudyInstanceUID") == study_uid and tags.get("SOPClassUID") in (
                SEG_STORAGE, COMPREHENSIVE_3D_SR):
            found[tags["SOPClassUID"]] = pydicom.dcmread(
                DicomBytesIO(pacs.file(tags["SOPInstanceUID"])))
    return found


def check_content(node, truth, seg_ds: pydicom.Dataset, sr_ds: pydicom.Dataset,
                  tmp: Path) -> None:
    """What the radiologist would check: the mask, the volumes, the references."""
    findings = node.series(truth.spec.series_uid)["jobs"][-1]["result"]
    labels = np.load(Path(findings["outputs"]["directory"]) / "labels.npy")
    slice_of = {s["sop_instance_uid"]: k for k, s in enumerate(findings["series"]["slices"])}
    assert set(slice_of) == set(truth.sop_instance_uids)
    seg_ds.save_as(tmp / "seg.dcm")
    sr_ds.save_as(tmp / "sr.dcm")

    # SEG: same study, references the source series, hemorrhage pixels equal the mask.
    seg = hd.seg.segread(tmp / "seg.dcm")
    assert seg.StudyInstanceUID == truth.spec.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == truth.spec.series_uid
    assert "RESEARCH USE" in seg.SeriesDescription.upper()
    frames = seg.pixel_array if seg.pixel_array.ndim == 3 else seg.pixel_array[None]
    hemorrhage = np.zeros(labels.shape, dtype=bool)
    shared = seg.SharedFunctionalGroupsSequence[0]
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        # With one segment, its identification sits in the shared functional groups.
        ident = item.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        if ident[0].ReferencedSegmentNumber != 1:
            continue
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        hemorrhage[slice_of[source.ReferencedSOPInstanceUID]] |= frame.astype(bool)
    assert hemorrhage.any() and np.array_equal(hemorrhage, labels == 1)  # blood without contrast

    # SR: TID 1500, volume equal to Findings, image library = the source images.
    sr = hd.sr.srread(tmp / "sr.dcm")
    assert sr.StudyInstanceUID == truth.spec.study_uid
    groups = {g.tracking_identifier: g for g in
              sr.content.get_volumetric_roi_measurement_groups()}
    blood = groups["Hemorrhage, non-enhancing"]
    (volume,) = blood.get_measurements(name=VOLUME)
    assert abs(volume.value - findings["volumes_ml"]["non_enhancing_hemorrhage"]) < 1e-6
    assert blood.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    (container,) = [item for item in sr.ContentSequence
                    if item.ConceptNameCodeSequence[0].CodeValue == "111028"]  # Image Library
    library = {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
               for item in _walk(container.ContentSequence) if item.ValueType == "IMAGE"}
    assert library == set(truth.sop_instance_uids)


def _walk(items):
    for item in items:
        yield item
        yield from _walk(getattr(item, "ContentSequence", []))


def test_results_arrive_in_the_pacs_with_the_source_study(node_factory, phantom_factory,
                                                          tmp_path):
    truth = phantom_factory("e2e", slices=60, rows=256, cols=256, blood="large", blush=True)
    pacs = Orthanc(tmp_path / "orthanc", free_port(), free_port()).start()
    try:
        node = node_factory(destination_config(pacs))
        sending = time.monotonic()
        storescu([truth.paths[0].parent], node.dicom_port)
        found = wait_for(lambda: (r := results_in_orthanc(pacs, truth.spec.study_uid))
                         and len(r) == 2 and r, timeout=120, what="SEG and SR in Orthanc")
        check_content(node, truth, found[SEG_STORAGE], found[COMPREHENSIVE_3D_SR], tmp_path)
        deliveries = node.studies()[0]["deliveries"]
        assert sorted((d["kind"], d["state"]) for d in deliveries) == [("seg", "sent"),
                                                                      ("sr", "sent")]
        # What the IT admin's Prometheus sees: both delivered, and the turnaround from
        # the last image to the results in the PACS, within what this test waited.
        with httpx.Client(timeout=30) as client:
            figures = scrape(client, node.url)
        assert one(figures, "trauma_node_deliveries", state="sent") == 2
        turnaround = one(figures, "trauma_node_recent_turnaround_seconds", quantile="1")
        assert 0 < turnaround < time.monotonic() - sending
    finally:
        pacs.stop()


def test_a_pacs_that_is_down_gets_the_results_after_a_node_restart(node_factory, phantom_factory,
                                                                    tmp_path):
    truth = phantom_factory("e2e-down", slices=40, rows=128, cols=128, pixel_spacing=(3.125, 3.125),
                            blood="small")  # a whole abdomen in the field of view
    pacs = Orthanc(tmp_path / "orthanc", free_port(), free_port())
    node = node_factory(destination_config(pacs))
    storescu([truth.paths[0].parent], node.dicom_port)

    def failed_attempts():
        studies = node.studies()
        d = studies[0]["deliveries"] if studies else []
        return len(d) == 2 and all(x["state"] == "pending" and x["attempts"] >= 1 for x in d)

    wait_for(failed_attempts, timeout=120, what="failed delivery attempts")
    assert "delivery to pacs" in node.log() and "failed" in node.log()
    node.stop()
    try:
        pacs.start()
        node.start()
        found = wait_for(lambda: (r := results_in_orthanc(pacs, truth.spec.study_uid))
                         and len(r) == 2 and r, timeout=60, what="results after restart")
        assert set(found) == {SEG_STORAGE, COMPREHENSIVE_3D_SR}
    finally:
        pacs.stop()


def test_a_pacs_forwarding_a_whole_study_to_the_node(node_factory, phantom_factory, tmp_path):
    """Orthanc as the sender (C-STORE SCU): the way a PACS auto-forwards a study."""
    truth = phantom_factory("forwarded", slices=40, rows=128, cols=128, blood="small")
    node = node_factory(FAST)
    pacs = Orthanc(tmp_path / "orthanc", free_port(), free_port(),
                   modalities={"trauma": ["TRAUMA_AI", "127.0.0.1", node.dicom_port]}).start()
    try:
        for path in truth.paths:
            pacs.upload(path)
        study = pacs.get("/studies")[0]
        response = httpx.post(f"{pacs.url}/modalities/trauma/store", json={
            "Resources": [study], "Synchronous": True}, timeout=120)
        assert response.status_code == 200, response.text
        series = node.wait_series_state(truth.spec.series_uid, {"done"}, timeout=60)
        assert series["instances"] == 40
        assert "association accepted: calling 'PACS'" in node.log()
    finally:
        pacs.stop()
