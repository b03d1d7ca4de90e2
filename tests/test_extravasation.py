"""Active extravasation at the attenuation the literature reports, the traps that are not
extravasation, and the contrast phase read from the images.

Cases of bench/fidelity.py on coarse grids (256x256, 5 mm slices), so that the file runs
in seconds: a blush 50 HU below the aorta (Willmann 2002: mean 155 HU against 199 HU),
positive oral contrast, calcified splenic granulomas, excreted contrast on a delayed phase.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import fidelity  # noqa: E402
from pipeline.anatomy import build_anatomy  # noqa: E402
from pipeline.findings import Findings  # noqa: E402
from pipeline.run import run_volume  # noqa: E402
from pipeline.settings import PipelineSettings  # noqa: E402


def case(name: str) -> fidelity.Case:
    return replace(next(c for c in fidelity.EXTRAVASATION_CASES if c.name == name), size=256, slice_mm=5.0)


def analyse(name: str) -> tuple[Findings, float]:
    """The Findings and the true blush volume (mL)."""
    volume, truth = fidelity.phantom_volume(case(name).spec())
    return run_volume(volume), float((truth == 2).sum()) * volume.voxel_volume_mm3 / 1000.0


def test_a_blush_50_hu_below_the_aorta_is_found_within_30_percent():
    findings, truth_ml = analyse("blush150-aorta200-perisplenic-portal")
    assert findings.volumes_ml["active_extravasation"] == pytest.approx(truth_ml, rel=0.3)
    assert findings.risk_tier == "high"
    (focus,) = findings.contrast_foci
    assert focus.compartment == "perisplenic" and focus.mean_hu < focus.aorta_hu - 30


@pytest.mark.parametrize("name, why", [
    ("oral350-portal", "bowel lumen (oral contrast)"),
    ("granuloma-portal", "denser than extravasated contrast"),
    ("excretion-delayed", "excreted contrast (delayed phase)"),
])
def test_contrast_that_is_not_extravasation_gives_no_blush(name, why):
    findings, _ = analyse(name)
    assert findings.volumes_ml["active_extravasation"] == 0
    assert not findings.contrast_foci and findings.risk_tier == "none"
    assert any(why in note for note in findings.provenance.notes), findings.provenance.notes


@pytest.mark.parametrize("name, phase", [
    ("vessels-arterial", "arterial"), ("vessels-portal", "portal_venous"), ("excretion-delayed", "delayed"),
])
def test_the_phase_is_read_from_the_images(name, phase):
    volume, _ = fidelity.phantom_volume(case(name).spec())
    found = build_anatomy(volume, PipelineSettings()).phase
    assert found.name == phase, found
    assert found.evidence and found.measured["aorta_hu"] is not None


def test_findings_state_the_phase_and_what_one_phase_cannot_tell():
    findings, _ = analyse("blush150-aorta200-perisplenic-portal")
    assert findings.phase.name == "portal_venous"
    assert "Contrast phase, read from the images (not the series description): portal-venous" in findings.report
    assert "could not be determined" in findings.report and "pseudoaneurysm" in findings.report
    document = findings.to_json_dict()
    assert Findings.from_json_dict(document).phase == findings.phase
    del document["phase"]  # a findings.json written before the field
    assert Findings.from_json_dict(document).phase.name == "undetermined"
