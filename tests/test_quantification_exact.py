"""Quantification is exact: voxel count x the voxel volume from the DICOM geometry."""

from __future__ import annotations

import numpy as np
import pytest

from support.phantom import PhantomSpec, make_volume
from pipeline.anatomy import build_anatomy
from pipeline.labels import ACTIVE_EXTRAVASATION, HEMORRHAGE
from pipeline.quantification import VoxelQuantification, count_labels, volumes_ml
from pipeline.settings import PipelineSettings
from pipeline.stages import StageContext
from pipeline.volume import SliceRef, Volume

SPACING = (3.7, 0.61, 0.93)  # anisotropic on purpose: slice, row, column (mm)


def ellipsoid_mask(shape, centre, semi_axes_mm, spacing) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) * d / a) ** 2 for g, c, a, d in zip(grids, centre, semi_axes_mm, spacing)) <= 1.0


def test_known_mask_on_anisotropic_spacing_within_a_tenth_of_a_percent():
    shape = (40, 200, 180)
    blood = ellipsoid_mask(shape, (20, 100, 90), (40.0, 30.0, 50.0), SPACING)
    blush = ellipsoid_mask(shape, (20, 100, 90), (8.0, 5.0, 6.0), SPACING)
    labels = np.where(blood, HEMORRHAGE, 0).astype(np.uint8)
    labels[blush] = ACTIVE_EXTRAVASATION

    got = volumes_ml(count_labels(labels), float(np.prod(SPACING)))

    voxel_ml = np.prod(SPACING) / 1000
    assert got["hemorrhage"] == pytest.approx(blood.sum() * voxel_ml, rel=1e-3)
    assert got["active_extravasation"] == pytest.approx(blush.sum() * voxel_ml, rel=1e-3)
    # And against the analytic ellipsoid, which the voxelisation approximates.
    assert got["hemorrhage"] == pytest.approx(4 / 3 * np.pi * 40 * 30 * 50 / 1000, rel=0.01)


def test_collections_add_up_exactly_to_the_total():
    spec = PhantomSpec(slices=50, rows=160, cols=160, pixel_spacing=(2.5, 2.5), slice_spacing=6.0,
                       blood="large", blush=True)
    hu, truth, spacing = make_volume(spec)
    n = spec.slices
    volume = Volume(hu, spacing, (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0),
                    [SliceRef(str(k), None, (-199.0, -199.0, 150.0 - k * spacing[0])) for k in range(n)],
                    "1.2", "1.2.3", "1.2.3.4", "CT")
    settings = PipelineSettings()
    context = StageContext(volume, settings, build_anatomy(volume, settings), "unknown")
    labels = np.where(truth > 0, HEMORRHAGE, 0).astype(np.uint8)
    labels[truth == 2] = ACTIVE_EXTRAVASATION

    q = VoxelQuantification(settings).run(context, labels)

    voxel_ml = np.prod(spacing) / 1000
    assert q.volumes_ml["hemorrhage"] == pytest.approx((truth > 0).sum() * voxel_ml, rel=1e-9)
    assert sum(c.volume_ml for c in q.components) == pytest.approx(q.volumes_ml["hemorrhage"], abs=1e-2)
    assert sum(q.by_region_ml.values()) == pytest.approx(q.volumes_ml["hemorrhage"], abs=1e-2)
    assert sum(c.active_extravasation_ml for c in q.components) == pytest.approx(
        q.volumes_ml["active_extravasation"], abs=1e-3)
    assert {"perisplenic", "pelvic"} <= set(q.by_region_ml)
