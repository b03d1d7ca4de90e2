"""Truthful findings: an organ is injured only on evidence inside it; blood beside it is
placed in its compartment, each mL once; the report and the coded SR say the same."""

from __future__ import annotations

import re

import pydicom
import pytest

from dicom_out import build_outputs
from dicom_out.codes import compartment_site
from pipeline import PipelineSettings, run_series

COARSE = dict(slices=48, rows=160, cols=160, pixel_spacing=(2.5, 2.5), slice_spacing=5.0)
# layout -> the organs truly injured (parenchymal evidence) in it
LAYOUTS = {
    "splenic_injury": {"spleen"},
    "large": set(),  # beside the spleen, the liver and the right kidney, into the pelvis
    "perirenal": set(),  # lateral to the right kidney, touching it
    "peribowel": set(),  # around a bowel loop
}


@pytest.fixture(scope="module")
def analysed(phantom_factory):
    found = {}
    for layout in LAYOUTS:
        truth = phantom_factory(f"truth-{layout}", **COARSE, blood=layout, blush=layout == "splenic_injury")
        findings = run_series(truth.paths, PipelineSettings())
        sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in truth.paths]
        outputs = build_outputs(findings, sources, series_version=1, algorithm_name="trauma-node test",
                                algorithm_version="1")
        found[layout] = (truth, findings, outputs.sr)
    return found


@pytest.mark.parametrize("layout", LAYOUTS)
def test_only_organs_with_parenchymal_evidence_are_injured(analysed, layout):
    truth, findings, _ = analysed[layout]
    assert findings.volumes_ml["hemorrhage"] == pytest.approx(truth.volumes_ml["hemorrhage"], rel=0.25)
    injured = {name for name, o in findings.organs.items() if o.injured}
    assert injured == LAYOUTS[layout]
    for name, organ in findings.organs.items():
        if name not in LAYOUTS[layout]:
            assert organ.aast_grade is None and organ.intraparenchymal_blood_ml == 0, name
    assert not [o for o in findings.reading["organs_involved"] if o not in LAYOUTS[layout]]


def test_blood_that_touches_an_organ_is_adjacency(analysed):
    _, findings, _ = analysed["perirenal"]
    touching = [c for c in findings.compartments if "kidney_right" in c.organs_adjacent]
    assert touching and not any(c.parenchymal for c in touching)
    assert findings.organs["kidney_right"].adjacent_compartments
    _, bowel, _ = analysed["peribowel"]
    assert any("bowel" in c.organs_adjacent for c in bowel.compartments)
    assert not bowel.organs["bowel"].injured


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compartments_add_up_to_the_total_and_organs_never_share_one(analysed, layout):
    _, findings, _ = analysed[layout]
    total = findings.volumes_ml["hemorrhage"]
    assert sum(c.volume_ml for c in findings.compartments) == pytest.approx(total, abs=0.01)
    assert sum(findings.volumes_by_region_ml.values()) == pytest.approx(total, abs=0.01)
    assert len({c.name for c in findings.compartments}) == len(findings.compartments)
    per_organ = sum(o.adjacent_blood_ml + o.intraparenchymal_blood_ml for o in findings.organs.values())
    assert per_organ <= total + 0.01  # each compartment is counted for one organ at most
    for component in findings.components:
        assert sum(component.compartments.values()) == pytest.approx(component.volume_ml, abs=0.01)


def test_the_injured_spleen_is_graded_from_its_own_evidence(analysed):
    _, findings, _ = analysed["splenic_injury"]
    spleen = findings.organs["spleen"]
    assert spleen.intraparenchymal_blood_ml > 3 and spleen.injury_evidence
    # Parenchymal hematoma (< 5 cm) and a blush in the blood beyond the spleen, on one phase:
    # active bleeding (V) or a vascular injury (IV) not told apart, so at least IV.
    assert spleen.aast_grade == 4 and "AAST-SPLEEN-II-HEMATOMA" in spleen.aast_rules
    assert "AAST-SPLEEN-IV-BLUSH-BEYOND-ONE-PHASE" in spleen.aast_rules


def _measurement_groups(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    (measurements,) = [i for i in sr.ContentSequence
                       if i.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurements"]
    return list(measurements.ContentSequence)


def _item(group: pydicom.Dataset, meaning: str) -> pydicom.Dataset:
    return next(i for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == meaning)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_report_and_the_coded_sr_say_the_same(analysed, layout):
    _, findings, sr = analysed[layout]
    coded_injuries, coded_compartments = set(), {}
    for group in _measurement_groups(sr):
        finding = _item(group, "Finding").ConceptCodeSequence[0]
        tracking = _item(group, "Tracking Identifier").TextValue
        if finding.CodeValue == "417746004":  # Traumatic injury
            coded_injuries.add(tracking)
        elif tracking.startswith("Hemorrhage, ") and tracking not in (
                "Hemorrhage, total", "Hemorrhage, non-enhancing"):
            volume = _item(group, "Volume").MeasuredValueSequence[0].NumericValue
            coded_compartments[tracking.removeprefix("Hemorrhage, ")] = float(volume)
    titles = {"spleen": "Spleen injury", "liver": "Liver injury", "kidney_right": "Right kidney injury",
              "kidney_left": "Left kidney injury", "bowel": "Bowel injury"}
    assert coded_injuries == {titles[o] for o in LAYOUTS[layout]}
    reported_injuries = {m.group(1) for m in re.finditer(r"^- ([A-Za-z ]+): INJURY", findings.report, re.M)}
    assert {f"{name} injury" for name in reported_injuries} == coded_injuries
    assert "INJURY" not in findings.report.replace("INJURY (parenchymal evidence)", "")
    # Every compartment the report lists is coded with the same volume.
    expected = {compartment_site(c.name)[0]: c.volume_ml for c in findings.compartments if not c.parenchymal}
    assert coded_compartments == pytest.approx(expected, abs=1e-3)
    for c in findings.compartments:
        assert f"{c.name.replace('_', ' ')}: {c.volume_ml:.1f} mL" in findings.report
