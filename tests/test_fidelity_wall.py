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


# The generated evaluation dataset's grid (bench/evaluation_dataset.py): 256 x 256 at
# 1.5625 mm, 2.5 mm slices over 300 mm. There the wall's innermost pixels lie beyond
# the cut here and there, in one sheet the height of the wall, and the partial volume
# of the liver pressed into the wall made a seed that flooded it: 20.3 mL of false
# blood beside the liver on a clean thin patient, +62 % on perirenal blood.
DATASET_GRID = dict(slices=120, rows=256, cols=256, pixel_spacing=(1.5625, 1.5625), slice_spacing=2.5)


def test_clean_thin_phantom_at_the_dataset_grid_has_no_hemorrhage():
    volume, _ = fidelity.phantom_volume(fidelity.PhantomSpec(**DATASET_GRID, habitus="thin", seed=1))
    findings = run_volume(volume)
    assert findings.volumes_ml["hemorrhage"] == 0.0
    assert findings.components == []
    assert all(o.adjacent_blood_ml == 0 for o in findings.organs.values())


@pytest.mark.parametrize("blood", ["wall_right", "perirenal"])
def test_thin_phantom_blood_at_the_dataset_grid_is_within_20_percent(blood):
    volume, truth = fidelity.phantom_volume(
        fidelity.PhantomSpec(**DATASET_GRID, habitus="thin", blood=blood, seed=1))
    findings = run_volume(volume)
    truth_ml = (truth > 0).sum() * volume.voxel_volume_mm3 / 1000
    assert findings.volumes_ml["hemorrhage"] == pytest.approx(truth_ml, rel=0.2)
    assert not [o for o in findings.organs.values() if fidelity.injured(o)]
