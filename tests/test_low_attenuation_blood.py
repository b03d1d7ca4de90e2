"""Blood under 30 HU (unclotted or diluted) is found in thick collections, and the same HU
at organ tips and edges against fluid-filled bowel (a thin patient) is not blood."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import fidelity  # noqa: E402


def case(name: str, **changes) -> fidelity.Case:
    return replace(next(c for c in fidelity.CASES if c.name == name), **changes)


@pytest.mark.parametrize("name", ["lowatt25-wall-right-average", "lowatt25-peribowel-average"])
def test_a_25_hu_collection_is_found_within_20_percent(name):
    result = fidelity.measure(case(name, slice_mm=5.0))
    assert result["found_ml"] == pytest.approx(result["truth_ml"], rel=0.2)
    assert result["dice"] > 0.8 and result["claims"] == []


def test_partial_volume_in_a_thin_patient_is_not_low_attenuation_blood():
    # 10 HU fluid-filled bowel against 110 HU liver: 20-30 HU at every organ edge.
    assert fidelity.measure(case("clean-thin"))["found_ml"] < 2.0
