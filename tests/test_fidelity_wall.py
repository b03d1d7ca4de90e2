"""Blood against the abdominal wall with no fat plane is kept, and said to be uncertain.

A few cases of bench/fidelity.py at 5 mm slices (fast): the embedded baseline
must find blood lining the lateral wall of a thin patient (no subcutaneous or
intra-abdominal fat to show where the wall ends) within 20 % of the truth, and
nothing on clean phantoms.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import fidelity  # noqa: E402
from pipeline.findings import Findings  # noqa: E402
from pipeline.run import run_volume  # noqa: E402

WALL = "abuts the abdominal wall without a fat plane"


def case(name: str, slice_mm: float = 5.0) -> fidelity.Case:
    return replace(next(c for c in fidelity.CASES if c.name == name), slice_mm=slice_mm)


@pytest.mark.parametrize("name", ["wall-right-thin", "wall-left-thin", "wall-left-average"])
def test_blood_against_the_wall_is_found_and_flagged(name):
    volume, truth = fidelity.phantom_volume(case(name).spec())
    findings = run_volume(volume)
    found, expected = findings.labels > 0, truth > 0
    truth_ml = expected.sum() * volume.voxel_volume_mm3 / 1000
    assert findings.volumes_ml["hemorrhage"] == pytest.approx(truth_ml, rel=0.2)
    assert 2 * (found & expected).sum() / (found.sum() + expected.sum()) > 0.75
    assert not [o for o in findings.organs.values() if fidelity.injured(o)]
    largest = max(findings.components, key=lambda c: c.volume_ml)
    assert WALL in largest.boundary_uncertain


@pytest.mark.parametrize("name, slice_mm", [("clean-average", 5.0), ("clean-thin", 2.5)])
def test_clean_phantoms_find_under_10_ml(name, slice_mm):
    result = fidelity.measure(case(name, slice_mm))
    assert result["found_ml"] < 10.0
    assert result["claims"] == []


def test_blood_with_a_fat_plane_is_not_flagged_and_old_findings_still_load():
    volume, _ = fidelity.phantom_volume(replace(case("large-average"), blood="large").spec())
    findings = run_volume(volume)
    assert findings.components and not any(WALL in c.boundary_uncertain for c in findings.components)
    document = findings.to_json_dict()
    for component in document["components"]:  # a findings.json written before the field
        del component["boundary_uncertain"]
    assert all(c.boundary_uncertain == [] for c in Findings.from_json_dict(document).components)
