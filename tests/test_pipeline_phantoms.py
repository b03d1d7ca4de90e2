"""The embedded default on phantoms with known blood: CT series in, Findings out."""

from __future__ import annotations

import json
import shutil

import highdicom as hd
import numpy as np
import pytest

from support.phantom import make_volume
from node.commands.analyze import analyze
from pipeline import PipelineSettings, run_series
from pipeline.findings import Findings
from pipeline.volume import VolumeError, load_volume

# name -> spec: blood none / small / large, with and without blush, different
# pixel and slice spacings and file orders. All cover the 400 mm field of view.
PHANTOMS = {
    "none": dict(slices=60, rows=256, cols=256, pixel_spacing=(1.5625, 1.5625), slice_spacing=5.0,
                 blood="none", order="shuffled"),
    "blush_only": dict(slices=100, rows=256, cols=256, pixel_spacing=(1.5625, 1.5625), slice_spacing=3.0,
                       blood="none", blush=True, order="descending"),
    "small": dict(slices=75, rows=320, cols=320, pixel_spacing=(1.25, 1.25), slice_spacing=4.0,
                  blood="small", order="ascending"),
    "large": dict(slices=50, rows=384, cols=384, pixel_spacing=(1.0, 1.0), slice_spacing=6.0,
                  blood="large", order="descending"),
    "large_blush": dict(slices=60, rows=256, cols=256, pixel_spacing=(1.5625, 1.5625), slice_spacing=5.0,
                        blood="large", blush=True, order="shuffled"),
    # Thin slices: merged two by two on the working grid, redrawn one by one.
    "thin_large_blush": dict(slices=240, rows=200, cols=200, pixel_spacing=(2.0, 2.0), slice_spacing=1.25,
                             blood="large", blush=True, order="ascending"),
}
EMBEDDED = "embedded CPU baseline, no model weights"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float(np.sum(a & b)) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def analysed(phantom_factory):
    """Each phantom written once and run once through the pipeline."""
    results = {}
    for name, spec in PHANTOMS.items():
        truth = phantom_factory(f"pipeline-{name}", **spec)
        results[name] = (truth, run_series(truth.paths))
    return results


@pytest.mark.parametrize("name", PHANTOMS)
def test_volumes_within_15_percent_of_the_truth(analysed, name):
    truth, findings = analysed[name]
    for key in ("hemorrhage", "active_extravasation"):
        expected = truth.volumes_ml[key]
        if expected == 0:
            assert findings.volumes_ml[key] == 0, f"{key} found where there is none"
        else:
            assert findings.volumes_ml[key] == pytest.approx(expected, rel=0.15), key


@pytest.mark.parametrize("name", [n for n in PHANTOMS if n != "none"])
def test_no_voxel_of_fat_is_called_blood(analysed, name):
    """What a reader sees in the viewer's statistics: the segment's HU never reaches fat."""
    truth, findings = analysed[name]
    hu = load_volume(truth.paths, 10, 0.5).hu
    assert hu[findings.labels > 0].min() > PipelineSettings().hu.fat_max


@pytest.mark.parametrize("name", [n for n in PHANTOMS if n != "none"])
def test_blood_found_where_the_blood_is(analysed, name):
    truth, findings = analysed[name]
    expected = make_volume(truth.spec)[1]  # truth labels, cranial first like the volume
    assert dice(findings.labels > 0, expected > 0) > 0.9
    if truth.spec.blush:
        assert dice(findings.labels == 2, expected == 2) > 0.8


@pytest.mark.parametrize("name, tier, rules", [
    ("none", "none", {"NO-BLOOD-DETECTED"}),
    ("small", "low", {"STATUS-UNKNOWN"}),
    ("large", "high", {"STATUS-UNKNOWN", "EAST-HEMOPERITONEUM-AMOUNT"}),
    ("large_blush", "high", {"STATUS-UNKNOWN", "EAST-HEMOPERITONEUM-AMOUNT"}),
    ("thin_large_blush", "high", {"STATUS-UNKNOWN", "EAST-HEMOPERITONEUM-AMOUNT"}),
    ("blush_only", "high", {"STATUS-UNKNOWN"}),
])
def test_tier_and_recommendation_as_the_rules_say(analysed, name, tier, rules):
    _, findings = analysed[name]
    assert findings.risk_tier == tier
    assert {r.id for r in findings.recommendation.rules_fired if r.branch is None} == rules


def test_blood_beside_organs_is_reported_by_compartment_never_as_injury(analysed):
    """The phantoms' collections lie beside the spleen, liver and right kidney, none inside
    them: no organ may be called injured or graded, and the blush is placed in its space."""
    _, findings = analysed["large_blush"]
    assert {"perisplenic", "perihepatic", "pelvic"} <= set(findings.volumes_by_region_ml)
    perisplenic = next(c for c in findings.compartments if c.name == "perisplenic")
    assert perisplenic.active_extravasation_ml > 0 and "spleen" in perisplenic.organs_adjacent
    spleen = findings.organs["spleen"]
    assert spleen.blush_outside_adjacent and spleen.adjacent_blood_ml == perisplenic.volume_ml
    assert "source not shown" in spleen.note
    for name, phantom in analysed.items():
        for organ in phantom[1].organs.values():
            assert not organ.injured and organ.aast_grade is None, (name, organ.organ)
    assert "perisplenic" in findings.reading["bleeding_description"]
    assert "active arterial extravasation" in findings.reading["differential_diagnosis"]
    _, large = analysed["large"]
    assert large.organs["spleen"].aast_grade is None


@pytest.mark.parametrize("name", ["large_blush", "thin_large_blush"])
def test_triage_picks_bloody_slices_in_anatomical_order(analysed, name):
    truth, findings = analysed[name]
    bloody = set(np.flatnonzero(make_volume(truth.spec)[1].any(axis=(1, 2))))
    chosen = findings.triage.chosen
    assert chosen == sorted(chosen) and 0 < len(chosen) <= 16
    assert set(chosen) <= bloody
    assert len(findings.triage.scores) == truth.spec.slices
    assert analysed["none"][1].triage.chosen == []


def test_hemodynamic_status_from_settings_or_the_call(analysed):
    truth, _ = analysed["small"]
    settings = PipelineSettings(hemodynamic_status="stable")
    stable = run_series(truth.paths, settings)
    assert stable.recommendation.hemodynamic_status == "stable"
    assert {r.id for r in stable.recommendation.rules_fired} == {"EAST-STABLE-NONOPERATIVE"}
    unstable = run_series(truth.paths, settings, hemodynamic_status="unstable")
    assert {r.id for r in unstable.recommendation.rules_fired} == {"EAST-UNSTABLE-OPERATIVE"}
    assert "laparotomy" in unstable.report


def test_every_output_is_labelled_research_use_with_the_backend(analysed):
    for _, findings in analysed.values():
        assert findings.report.startswith("RESEARCH USE ONLY")
        assert EMBEDDED in findings.report
        assert EMBEDDED in findings.provenance.backend_summary
        assert "RESEARCH USE ONLY" in findings.research_use
        stages = [s.stage for s in findings.provenance.stages]
        assert stages == ["volume", "anatomy", "triage", "segmentation", "quantification",
                          "reading", "grading", "report"]


def test_findings_json_round_trip(analysed):
    _, findings = analysed["large_blush"]
    document = json.loads(json.dumps(findings.to_json_dict()))
    for key in ("volumes_ml", "risk_tier", "organs", "recommendation", "report", "provenance",
                "triage", "reading", "components", "series", "label_volume", "schema_version"):
        assert key in document
    volumes = document["volumes_ml"]
    assert set(volumes) == {"hemorrhage", "non_enhancing_hemorrhage", "active_extravasation",
                            "contained_vascular_injury"}
    assert volumes["non_enhancing_hemorrhage"] + volumes["active_extravasation"] + volumes[
        "contained_vascular_injury"] == pytest.approx(volumes["hemorrhage"], abs=1e-9)
    assert document["contrast_foci"] and document["multiphase"]["compared"] is False
    # Each mL in one compartment: they add up to the total.
    assert sum(c["volume_ml"] for c in document["compartments"]) == pytest.approx(volumes["hemorrhage"], abs=0.01)
    assert set(document["reading"]) >= {"injury_pattern", "organs_involved", "bleeding_description",
                                        "severity_estimate", "differential_diagnosis"}
    assert Findings.from_json_dict(document).to_json_dict() == document


def test_analyze_folder_writes_findings_labels_and_report(analysed, phantom_factory, tmp_path):
    truth, _ = analysed["small"]
    scout = phantom_factory("pipeline-scout", slices=3, rows=64, cols=64, pixel_spacing=(6.25, 6.25))
    folder = tmp_path / "in"
    shutil.copytree(truth.paths[0].parent, folder / "ct")
    shutil.copytree(scout.paths[0].parent, folder / "scout")
    (folder / "README.txt").write_text("not DICOM")
    lines: list[str] = []

    findings = analyze(folder, tmp_path / "out", PipelineSettings(), progress=lines.append)

    document = json.loads((tmp_path / "out" / "findings.json").read_text())
    assert document["series"]["series_instance_uid"] == truth.spec.series_uid
    assert document["volumes_ml"]["hemorrhage"] == pytest.approx(truth.volumes_ml["hemorrhage"], rel=0.15)
    labels = np.load(tmp_path / "out" / "labels.npy")
    assert labels.shape == tuple(document["label_volume"]["shape"]) and labels.dtype == np.uint8
    assert document["label_volume"]["file"] == "labels.npy"
    assert (tmp_path / "out" / "report.txt").read_text() == findings.report
    assert any("segmentation" in line for line in lines) and findings.report in lines
    # The same SEG and SR the node sends to the PACS.
    seg = hd.seg.segread(tmp_path / "out" / "seg.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == truth.spec.series_uid
    sr = hd.sr.srread(tmp_path / "out" / "sr.dcm")
    assert sr.StudyInstanceUID == truth.spec.study_uid


def test_findings_document_is_json(analysed):
    truth, _ = analysed["none"]
    document = run_series(truth.paths, None).to_json_dict()
    json.dumps(document)
    assert document["risk_tier"] == "none" and document["volumes_ml"]["hemorrhage"] == 0


def test_a_gap_fails_with_the_problem_named(analysed):
    truth, _ = analysed["none"]
    middle = truth.paths[truth.z_positions.index(sorted(truth.z_positions)[30])]
    with pytest.raises(VolumeError, match="gap"):
        run_series([p for p in truth.paths if p != middle], None)
