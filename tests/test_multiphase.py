"""Active bleeding or a contained vascular injury, told apart across a study's phases."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pipeline import multiphase
from pipeline.findings import Assessment, ContrastFocus
from pipeline.settings import MultiphaseSettings

SETTINGS = MultiphaseSettings()


def focus(ml: float, hu: float, aorta: float, at=(110.0, 20.0, 70.0), extent=12.0, focus_id=1) -> ContrastFocus:
    return ContrastFocus(id=focus_id, volume_ml=ml, mean_hu=hu, aorta_hu=aorta, centroid_mm=list(at),
                         max_extent_mm=extent, compartment="perisplenic")


@dataclass
class Other:
    """The part of another series' Findings the comparison reads."""

    phase: str
    contrast_foci: list[ContrastFocus]
    series: dict = field(default_factory=lambda: {"series_instance_uid": "1.2.3", "frame_of_reference_uid": "9"})
    assessment: Assessment = field(default_factory=lambda: Assessment(True, []))


def current(phase: str | None, *foci: ContrastFocus) -> multiphase.Series:
    return multiphase.Series(phase, list(foci), {"series_instance_uid": "1.2.4", "frame_of_reference_uid": "9"})


def test_a_focus_that_grows_from_arterial_to_portal_is_active_bleeding():
    kinds, summary = multiphase.compare(current("portal_venous", focus(3.0, 180, 190, extent=25)),
                                        [Other("arterial", [focus(1.0, 260, 330)])], SETTINGS)
    assert kinds[1][0] == "active_bleeding" and "grew" in kinds[1][1]
    assert summary["compared"] and summary["phases"] == ["portal_venous", "arterial"]


def test_a_focus_that_keeps_its_size_and_follows_the_aorta_is_contained():
    kinds, _ = multiphase.compare(current("portal_venous", focus(1.05, 165, 190)),
                                  [Other("arterial", [focus(1.0, 290, 330)])], SETTINGS)
    assert kinds[1][0] == "contained_vascular_injury" and "followed the aorta" in kinds[1][1]


def test_a_focus_that_keeps_its_size_but_pools_is_active_bleeding():
    kinds, _ = multiphase.compare(current("delayed", focus(1.1, 250, 120)),
                                  [Other("portal_venous", [focus(1.0, 240, 190)])], SETTINGS)
    assert kinds[1][0] == "active_bleeding" and "pooled" in kinds[1][1]


def test_appearing_later_is_bleeding_fading_later_is_contained():
    kinds, _ = multiphase.compare(current("portal_venous", focus(2.0, 180, 190)),
                                  [Other("arterial", [])], SETTINGS)
    assert kinds[1][0] == "active_bleeding" and "not seen on the arterial" in kinds[1][1]
    # Seen on the arterial phase being analysed, gone on the portal phase analysed before.
    kinds, _ = multiphase.compare(current("arterial", focus(0.8, 300, 330)),
                                  [Other("portal_venous", [])], SETTINGS)
    assert kinds[1][0] == "contained_vascular_injury" and "faded" in kinds[1][1]
    # The portal phase analysed after the arterial one: the faded focus is named in the summary.
    _, summary = multiphase.compare(current("portal_venous"), [Other("arterial", [focus(0.8, 300, 330)])],
                                    SETTINGS)
    assert summary["faded_foci"] and "faded" in summary["faded_foci"][0]


def test_foci_far_apart_are_not_the_same_focus():
    kinds, _ = multiphase.compare(current("portal_venous", focus(1.0, 165, 190, at=(-80.0, 0.0, 60.0))),
                                  [Other("arterial", [focus(1.0, 290, 330)])], SETTINGS)
    assert kinds[1][0] == "active_bleeding"  # nothing at this place on the arterial phase


@pytest.mark.parametrize("phase, others, why", [
    ("portal_venous", [], "no other phase of the study was analysed"),
    (None, [Other("arterial", [focus(1.0, 290, 330)])], "the phase of this series was not recognised"),
    ("portal_venous", [Other("portal_venous", [focus(1.0, 165, 190)])], "no other phase"),
])
def test_one_phase_says_the_distinction_could_not_be_made(phase, others, why):
    kinds, summary = multiphase.compare(current(phase, focus(1.0, 165, 190)), others, SETTINGS)
    assert kinds == {} and not summary["compared"]
    assert "could not be determined" in summary["statement"] and why in summary["statement"]


# --- two phases of one phantom study through the pipeline --------------------------

TWO_PHASE = dict(slices=60, rows=256, cols=256, pixel_spacing=(1.5625, 1.5625), slice_spacing=5.0,
                 blood="large", blush=True)
PERIRENAL = dict(blood="perirenal", blush_site="perirenal")
CASES = {  # (arterial, portal-venous): the blush's HU and size on each
    "growing": (dict(blush_hu=280, blush_scale=1.0), dict(blush_hu=200, blush_scale=1.6)),
    "pseudoaneurysm": (dict(blush_hu=270, blush_scale=1.0), dict(blush_hu=165, blush_scale=1.0)),
    # Against the right kidney, 20 HU above its portal-phase parenchyma (170 HU) once it has grown.
    "growing-perirenal": (dict(PERIRENAL, blush_hu=250, blush_scale=1.0),
                          dict(PERIRENAL, blush_hu=190, blush_scale=1.6)),
}


@pytest.fixture(scope="module", params=list(CASES))
def two_phases(request, phantom_factory):
    from pydicom.uid import generate_uid

    from pipeline import run_series

    arterial, portal = CASES[request.param]
    same = dict(study_uid=generate_uid(), frame_of_reference_uid=generate_uid())
    first = phantom_factory(f"{request.param}-arterial", **{**TWO_PHASE, **arterial}, phase="arterial", **same)
    second = phantom_factory(f"{request.param}-portal", **{**TWO_PHASE, **portal}, phase="portal_venous", **same)
    earlier = run_series(first.paths)
    return request.param, second, earlier, run_series(second.paths, other_phases=[earlier])


def test_the_phases_tell_a_growing_blush_from_a_pseudoaneurysm(two_phases):
    case, truth, earlier, later = two_phases
    assert (earlier.phase.name, later.phase.name) == ("arterial", "portal_venous")
    assert earlier.contrast_foci and earlier.contrast_foci[0].kind == "undetermined"
    assert "could not be determined" in earlier.multiphase["statement"]  # one phase when it ran
    focus, *specks = later.contrast_foci  # the largest first
    assert all(speck.volume_ml < 0.05 for speck in specks), specks  # noise at an organ's edge at most
    assert focus.volume_ml == pytest.approx(truth.volumes_ml["active_extravasation"], rel=0.3)
    assert later.multiphase["compared"] and later.multiphase["phases"] == ["portal_venous", "arterial"]
    if case.startswith("growing"):
        assert focus.kind == "active_bleeding" and "grew" in focus.evidence
        assert later.volumes_ml["active_extravasation"] > 0 == later.volumes_ml["contained_vascular_injury"]
        assert "ACTIVE BLEEDING" in later.report
    else:
        assert focus.kind == "contained_vascular_injury" and "followed the aorta" in focus.evidence
        assert later.volumes_ml["contained_vascular_injury"] == pytest.approx(focus.volume_ml, abs=1e-3)
        assert later.volumes_ml["active_extravasation"] == 0
        assert (later.labels == 3).sum() > 0 and (later.labels == 2).sum() == 0  # its own label
        assert "CONTAINED VASCULAR INJURY (pseudoaneurysm)" in later.report
    assert later.risk_tier == "high"
