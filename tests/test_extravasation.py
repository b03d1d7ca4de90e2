"""Active extravasation at the attenuation the literature reports, the traps that are not
extravasation, and the contrast phase read from the images.

Cases of bench/fidelity.py on coarse grids (256x256, 5 mm slices), so that the file runs
in seconds: a blush 50 HU below the aorta (Willmann 2002: mean 155 HU against 199 HU),
blushes in or against an organ that enhances nearly as much as they do, positive oral
contrast, calcified splenic granulomas, excreted contrast on a delayed phase, the
arterial-phase renal cortex and an unopacified IVC.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import fidelity  # noqa: E402
from pipeline.anatomy import LIVER, build_anatomy  # noqa: E402
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


@pytest.mark.parametrize("name, compartment, organ", [
    ("blush150-aorta180-intrasplenic-portal", "intrasplenic", "spleen"),  # 30 HU above the spleen
    # 20 HU above the kidney it lies against, below the liver (so in the perihepatic space)
    ("blush190-aorta180-perirenal-portal", "perihepatic", None),
    ("blush220-aorta180-intrarenal-portal", "intrarenal_right", "kidney_right"),
    ("blush260-aorta300-intrarenal-arterial", "intrarenal_right", "kidney_right"),  # 50 HU above the cortex
])
def test_a_blush_denser_than_the_parenchyma_round_it_is_found(name, compartment, organ):
    """What a radiologist checks: one focus where the blush is, its volume within 30%, its
    kind left open on one phase, and the organ it lies in injured (blush within), the organ
    it only lies against not."""
    findings, truth_ml = analyse(name)
    focus, *specks = findings.contrast_foci  # the largest first
    assert all(speck.volume_ml < 0.05 for speck in specks), specks  # noise at the organ's edge at most
    assert focus.volume_ml == pytest.approx(truth_ml, rel=0.3)
    assert findings.volumes_ml["active_extravasation"] == pytest.approx(truth_ml, rel=0.3)
    assert focus.compartment == compartment and focus.kind == "undetermined"
    assert findings.risk_tier == "high"
    injured = sorted(name for name, o in findings.organs.items() if o.injured)
    assert injured == ([organ] if organ else [])


@pytest.mark.parametrize("name, why", [
    ("oral350-portal", "bowel lumen (oral contrast)"),
    ("granuloma-portal", "calcification"),
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


@pytest.mark.parametrize("name", ["vessels-arterial", "granuloma-arterial", "vessels-portal", "excretion-thin-delayed"])
def test_enhancing_parenchyma_and_vessels_give_no_blush(name):
    """The arterial-phase renal cortex against its medulla, the spleen, the portal and splenic
    veins inside the liver and spleen, an unopacified IVC: denser than the parenchyma round
    them, and none of them extravasation."""
    findings, _ = analyse(name)
    assert findings.volumes_ml["active_extravasation"] == 0 and not findings.contrast_foci
    assert not any(o.injured for o in findings.organs.values())


@pytest.mark.parametrize("name", ["vessels-arterial", "excretion-delayed"])
def test_the_liver_does_not_follow_the_ivc(name):
    """On the arterial and delayed phases the IVC lies in the liver's HU window (unopacified
    below the renal veins, or washing out): the liver found still ends where it ends (the
    phantom's liver spans z -5..145 mm), and on the delayed phase the bladder lies below it."""
    volume, _ = fidelity.phantom_volume(case(name).spec())
    anatomy = build_anatomy(volume, PipelineSettings())
    z = [volume.slices[k].position[2] for w in np.flatnonzero((anatomy.regions == LIVER).any(axis=(1, 2)))
         for k in anatomy.full_slices(int(w))]
    assert -10.0 <= min(z) and max(z) <= 150.0, (min(z), max(z))
    if name == "excretion-delayed":
        assert anatomy.phase.measured["excreted_contrast"] == ["bladder", "renal collecting system"]
