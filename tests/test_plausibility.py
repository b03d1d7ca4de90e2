"""A series the pipeline cannot assess gets no hemorrhage result and no risk tier.

Noise that fills the field of view, an empty field, a head instead of an abdomen,
and findings more than a body could hold are reported as not assessed, with why,
in the Findings, the report and the SR; an abdomen without blood is assessed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_out import build_outputs
from support.phantom import PhantomSpec, _dataset, _grid, _z_positions
from pipeline import PipelineSettings, run_series

GEOMETRY = dict(slices=40, rows=128, cols=128, pixel_spacing=(3.125, 3.125), slice_spacing=5.0)
DCIODVFY = "/usr/bin/dciodvfy"


def _write(volume_hu: np.ndarray, out: Path) -> list[Path]:
    """A CT series of the given HU, with the phantoms' geometry and headers."""
    spec = PhantomSpec(**GEOMETRY)
    _, _, x0, y0 = _grid(spec)
    out.mkdir(parents=True)
    paths = []
    for k, z in enumerate(_z_positions(spec)):
        ds = _dataset(spec, k, z, volume_hu[k].astype(np.int16), k + 1, x0, y0)
        path = out / f"IM{k + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _head(shape: tuple[int, int, int]) -> np.ndarray:
    """A skull (bone) around brain (30-40 HU, the HU of blood) in air."""
    n, rows, cols = shape
    y, x = np.mgrid[:rows, :cols]
    r = np.hypot((x - cols / 2) / 28, (y - rows / 2) / 34)
    hu = np.full(shape, -1000, dtype=np.int16)
    hu[:, r <= 1.0] = 800
    hu[:, r <= 0.88] = 35
    return hu + np.random.default_rng(1).normal(0, 5, shape).astype(np.int16)


SHAPE = (GEOMETRY["slices"], GEOMETRY["rows"], GEOMETRY["cols"])
SCENES = {
    "noise": lambda: np.random.default_rng(0).uniform(40, 80, SHAPE),
    "empty": lambda: np.full(SHAPE, -1000),
    "head": lambda: _head(SHAPE),
}


@pytest.fixture(scope="module")
def not_assessed(tmp_path_factory):
    found = {}
    for name, make in SCENES.items():
        paths = _write(make(), tmp_path_factory.mktemp(f"scene-{name}") / "ct")
        found[name] = (paths, run_series(paths, PipelineSettings()))
    return found


@pytest.mark.parametrize("name, why", [
    ("noise", "no body outline"),
    ("empty", "no patient found"),
    ("head", "neither liver nor spleen"),
])
def test_no_hemorrhage_result_where_the_input_cannot_be_assessed(not_assessed, name, why):
    _, findings = not_assessed[name]
    assert not findings.assessment.assessed
    assert any(why in reason for reason in findings.assessment.reasons)
    assert findings.risk_tier == "not_assessed"
    assert findings.labels is None and findings.compartments == [] and findings.components == []
    assert not any(o.injured or o.aast_grade for o in findings.organs.values())
    assert "NOT ASSESSED" in findings.report and why in findings.report.lower()
    assert findings.recommendation.rules_fired[0].id == "NOT-ASSESSED"
    document = findings.to_json_dict()
    assert document["assessment"]["assessed"] is False and document["risk_tier"] == "not_assessed"


def test_noise_was_what_made_litres_of_hemorrhage(not_assessed):
    """The candidate the checks refused is kept in the assessment, not reported as blood."""
    _, findings = not_assessed["noise"]
    assert findings.assessment.measured["blood_candidate_ml"] > 1000
    assert findings.volumes_ml["hemorrhage"] == 0.0


def _items(item):
    for child in item.get("ContentSequence", []):
        yield child
        yield from _items(child)


@pytest.mark.parametrize("name", SCENES)
def test_the_sr_says_not_assessed_and_codes_no_tier(not_assessed, name, tmp_path):
    paths, findings = not_assessed[name]
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    outputs = build_outputs(findings, sources, series_version=1, algorithm_name="trauma-node test",
                            algorithm_version="1")
    assert outputs.seg is None  # no mask to show
    items = list(_items(outputs.sr))
    meanings = [i.ConceptNameCodeSequence[0].CodeMeaning for i in items]
    assert "Volume" not in meanings and "Extravasation" not in meanings
    tiers = [i.ConceptCodeSequence[0].CodeMeaning for i in items
             if i.ConceptNameCodeSequence[0].CodeMeaning == "Hemorrhage risk tier"]
    assert tiers == ["Not Evaluated"]
    impression = next(i.TextValue for i in items if i.ConceptNameCodeSequence[0].CodeMeaning == "Impression")
    assert "NOT ASSESSED" in impression
    outputs.sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    result = subprocess.run([DCIODVFY, str(tmp_path / "sr.dcm")], capture_output=True, text=True, timeout=60)
    assert not [l for l in (result.stdout + result.stderr).splitlines() if l.startswith("Error")]


def test_an_abdomen_without_blood_is_assessed(phantom_factory):
    truth = phantom_factory("plausible-clean", **GEOMETRY, blood="none")
    findings = run_series(truth.paths, PipelineSettings())
    assert findings.assessment.assessed, findings.assessment.reasons
    assert findings.risk_tier == "none" and findings.labels is not None


def test_more_blood_than_the_limit_is_not_a_finding(phantom_factory):
    truth = phantom_factory("plausible-bleed", **GEOMETRY, blood="large")
    settings = PipelineSettings()
    assert run_series(truth.paths, settings).assessment.assessed
    settings.plausibility.max_blood_ml = 50.0
    findings = run_series(truth.paths, settings)
    assert findings.risk_tier == "not_assessed"
    assert any("more than a body holds" in r for r in findings.assessment.reasons)


def test_questions_about_a_study_not_assessed_get_no_numbers(not_assessed):
    from pipeline.answering import GroundedAnswerer, Question

    _, findings = not_assessed["noise"]
    text = GroundedAnswerer().compose(Question(findings=findings, text="How much blood is there?"))
    assert "could not be assessed" in text and "no body outline" in text
    assert " mL" not in text.replace("; ".join(findings.assessment.reasons), "")  # only the reasons' figures


def test_a_field_of_view_that_cuts_the_body_is_assessed_with_a_note(phantom_factory):
    """A 200 mm field of view over a 340 mm wide abdomen: edge to edge, but a patient (fat, organs)."""
    truth = phantom_factory("plausible-cut", slices=40, rows=256, cols=256, pixel_spacing=(0.78125, 0.78125),
                            slice_spacing=5.0, blood="small")
    findings = run_series(truth.paths, PipelineSettings())
    assert findings.assessment.assessed, findings.assessment.reasons
    assert findings.assessment.measured["border_in_body"] > 0.6
    assert any("field of view cuts the body" in note for note in findings.provenance.notes)
