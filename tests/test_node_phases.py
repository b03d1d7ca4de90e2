"""The phases of a trauma study sent to a running node are analysed together: the later
phase is compared with the earlier one, and its SEG names what the comparison found."""

from __future__ import annotations

import json

import pydicom
from pydicom.uid import generate_uid

from support.nodes import FAST, storescu

PHASES = dict(slices=60, rows=256, cols=256, pixel_spacing=(1.5625, 1.5625), slice_spacing=5.0,
              blood="large", blush=True)


def test_a_pseudoaneurysm_is_told_from_the_arterial_and_portal_phases(node_factory, phantom_factory):
    same = dict(study_uid=generate_uid(), frame_of_reference_uid=generate_uid())
    arterial = phantom_factory("node-arterial", **PHASES, phase="arterial", blush_hu=270, **same)
    portal = phantom_factory("node-portal", **PHASES, phase="portal_venous", blush_hu=165, **same)
    node = node_factory(FAST)
    storescu(arterial.paths, node.dicom_port)
    storescu(portal.paths, node.dicom_port)
    for truth in (arterial, portal):
        node.wait_series_state(truth.spec.series_uid, {"done"}, timeout=120)

    def findings(truth) -> dict:
        folder = node.data_dir / "results" / truth.spec.study_uid / truth.spec.series_uid / "v1"
        return json.loads((folder / "findings.json").read_text())

    first, later = findings(arterial), findings(portal)
    assert first["phase"]["name"] == "arterial" and later["phase"]["name"] == "portal_venous"
    assert not first["multiphase"]["compared"]  # analysed first, alone
    assert later["multiphase"]["compared"] and later["multiphase"]["other_series"] == arterial.spec.series_uid
    (focus,) = later["contrast_foci"]
    assert focus["kind"] == "contained_vascular_injury"
    seg = pydicom.dcmread(node.data_dir / "results" / portal.spec.study_uid / portal.spec.series_uid
                          / "v1" / "seg.dcm", stop_before_pixels=True)
    assert "Contained vascular injury" in [s.SegmentLabel for s in seg.SegmentSequence]
    assert "CONTAINED VASCULAR INJURY (pseudoaneurysm)" in later["report"]
