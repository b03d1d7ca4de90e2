"""Selection rules: which complete series are analysed, and the reason for the others."""

from __future__ import annotations

import math

import pytest

from node.config import CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE, SelectionSection
from node.store.selection import decide

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
RULES = SelectionSection(min_slices=20)


def series(n: int = 40, spacing: float = 2.5, **overrides):
    out = []
    for k in range(n):
        g = {"modality": "CT", "image_type": ["ORIGINAL", "PRIMARY", "AXIAL"],
             "kernel": "STANDARD", "series_description": "ABD PV", "rows": 512,
             "columns": 512, "frames": 1, "position": [-200.0, -200.0, -k * spacing],
             "orientation": AXIAL, "pixel_spacing": [0.7, 0.7]}
        g.update(overrides)
        out.append((CT_IMAGE_STORAGE, g))
    return out


def test_a_good_axial_series_is_selected():
    d = decide(series(), RULES)
    assert d.selected and d.reason is None and d.slices == 40
    assert d.slice_spacing_mm == pytest.approx(2.5)


def test_slice_order_does_not_matter():
    s = series()
    assert decide(list(reversed(s)), RULES).selected


def tilted(deg: float) -> list[float]:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return [1.0, 0.0, 0.0, 0.0, c, s]


@pytest.mark.parametrize("change, reason", [
    (lambda s: series(10), "10 slices, fewer than the 20 required"),
    (lambda s: series(modality="MR"), "modality MR not in ['CT']"),
    (lambda s: series(image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"]), "image type LOCALIZER excluded"),
    (lambda s: series(kernel="BONEPLUS"), "reconstruction kernel 'BONEPLUS' excluded (BONE)"),
    (lambda s: series(series_description="Dose Report"), "series description matches excluded"),
    (lambda s: series(orientation=[1.0, 0.0, 0.0, 0.0, 0.0, -1.0]), "not axial: slice normal 90 deg"),
    (lambda s: series(orientation=tilted(30)), "not axial: slice normal 30 deg"),
    (lambda s: s[:20] + s[21:], "inconsistent slice spacing (2.50 to 5.00 mm): gaps"),
    (lambda s: s + [s[5]], "duplicate slice positions"),
    (lambda s: s[:-1] + [(s[-1][0], {**s[-1][1], "orientation": tilted(2)})],
     "mixed image orientations"),
    (lambda s: s[:-1] + [(s[-1][0], {**s[-1][1], "rows": 256})], "mixed image sizes"),
    (lambda s: series(spacing=7.0), "slice spacing 7.00 mm above 5.0 mm"),
    (lambda s: [("1.2.840.10008.5.1.4.1.1.7", g) for _, g in s],
     "not analysed: SOP class Secondary Capture Image Storage"),
])
def test_rules_skip_with_a_reason(change, reason):
    d = decide(change(series()), RULES)
    assert not d.selected
    assert reason in d.reason


def test_a_small_tilt_within_tolerance_is_axial():
    assert decide(series(orientation=tilted(5)), RULES).selected


def test_enhanced_ct_counts_frames():
    frames = [[-200.0, -200.0, -2.5 * k] for k in range(40)]
    g = {"modality": "CT", "image_type": ["ORIGINAL", "PRIMARY", "AXIAL"], "kernel": "",
         "series_description": "", "rows": 512, "columns": 512, "frames": 40,
         "position": frames[0], "frame_positions": frames, "orientation": AXIAL,
         "pixel_spacing": [0.7, 0.7]}
    d = decide([(ENHANCED_CT_IMAGE_STORAGE, g)], RULES)
    assert d.selected and d.slices == 40


def test_a_series_beyond_the_cost_limits_is_skipped_before_decoding():
    limits = SelectionSection(min_slices=20, max_voxels=512 * 512 * 40,
                              max_decoded_bytes=512 * 512 * 40 * 2)
    assert decide(series(40), limits).selected
    d = decide(series(41), limits)
    assert not d.selected and "selection.max_voxels" in d.reason
    assert d.reason.startswith("10,747,904 voxels")
    d = decide(series(40, bits_allocated=32), limits)  # twice the bytes per voxel
    assert not d.selected and "selection.max_decoded_bytes" in d.reason
    # Instances stored before these were recorded count as 16 bits, one sample.
    assert decide([(c, {k: v for k, v in g.items() if k != "bits_allocated"})
                   for c, g in series(40, bits_allocated=16)], limits).selected
    assert decide(series(40, rows=None), RULES).reason == "image size (rows, columns) missing"
