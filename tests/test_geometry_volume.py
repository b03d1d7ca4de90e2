"""Volume loading: slice order, spacing, HU, orientation, decoders, and every error case."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless,
                         generate_uid)

from support.phantom import PhantomSpec, make_volume, write_enhanced_series, write_series
from pipeline.volume import VolumeError, load_volume

# Small and quick: 24 slices of 96x96 at 4.17 mm cover the 400 mm field of view.
SMALL = dict(slices=24, rows=96, cols=96, pixel_spacing=(400 / 96, 400 / 96), slice_spacing=5.0,
             blood="small")


def spec(**changes) -> PhantomSpec:
    return PhantomSpec(**{**SMALL, **changes})


def expected_hu(s: PhantomSpec) -> np.ndarray:
    return make_volume(s)[0]


@pytest.mark.parametrize("order", ["descending", "ascending", "shuffled"])
def test_slices_sorted_by_position_not_instance_number(tmp_path, order):
    s = spec(order=order)
    truth = write_series(s, tmp_path)
    volume = load_volume(truth.paths[::-1])  # file order must not matter either
    assert np.array_equal(volume.hu, expected_hu(s))  # cranial first, like make_volume
    heights = [p[2] for p in (ref.position for ref in volume.slices)]
    assert heights == sorted(heights, reverse=True)
    assert [ref.position[2] for ref in volume.slices] == pytest.approx(truth.z_positions)


def test_spacing_from_positions_not_slice_thickness(tmp_path):
    truth = write_series(spec(slice_spacing=3.0, slice_thickness=5.0, slices=30), tmp_path)
    volume = load_volume(truth.paths)
    assert volume.spacing == pytest.approx((3.0, 400 / 96, 400 / 96))
    assert volume.voxel_volume_mm3 == pytest.approx(3.0 * (400 / 96) ** 2)


def test_hu_from_each_slices_rescale(tmp_path):
    s = spec(vary_rescale=True)
    truth = write_series(s, tmp_path)
    intercepts = {float(pydicom.dcmread(p, stop_before_pixels=True).RescaleIntercept) for p in truth.paths}
    assert len(intercepts) == 3
    assert np.array_equal(load_volume(truth.paths).hu, expected_hu(s))


def test_normal_turned_towards_the_head(tmp_path):
    # Rows running right-to-left flip the cross product to point to the feet.
    s = spec(image_orientation=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    volume = load_volume(write_series(s, tmp_path).paths)
    assert volume.normal == pytest.approx((0.0, 0.0, 1.0))
    assert volume.slices[0].position[2] > volume.slices[-1].position[2]
    assert volume.row_direction == pytest.approx((-1.0, 0.0, 0.0))


def test_patient_point_follows_the_geometry(tmp_path):
    truth = write_series(spec(), tmp_path)
    volume = load_volume(truth.paths)
    first = np.asarray(volume.slices[0].position)
    assert volume.patient_point(0, 0, 0) == pytest.approx(first)
    dz, dy, dx = volume.spacing
    assert volume.patient_point(2, 3, 4) == pytest.approx(first + [4 * dx, 3 * dy, -2 * dz])


def test_enhanced_ct_multiframe(tmp_path):
    s = spec(order="shuffled", vary_rescale=True)
    truth = write_enhanced_series(s, tmp_path / "enhanced.dcm")
    volume = load_volume(truth.paths)
    assert np.array_equal(volume.hu, expected_hu(s))
    assert volume.spacing[0] == pytest.approx(5.0)
    assert {ref.frame for ref in volume.slices} == set(range(1, s.slices + 1))


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1])
def test_compressed_transfer_syntaxes(tmp_path, syntax):
    s = spec(slices=12, transfer_syntax=syntax)
    truth = write_series(s, tmp_path)
    assert pydicom.dcmread(truth.paths[0]).file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(load_volume(truth.paths).hu, expected_hu(s))


# --- errors: each names its problem ------------------------------------------------

@pytest.fixture
def series(tmp_path) -> list[Path]:
    return write_series(spec(slices=12), tmp_path / "series").paths


def _edit(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def test_gap(series):
    by_height = sorted(series, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    with pytest.raises(VolumeError, match="gap"):
        load_volume([p for p in series if p != by_height[5]])


def test_duplicate_positions(series, tmp_path):
    copy = tmp_path / "copy.dcm"
    shutil.copy(series[3], copy)
    _edit(copy, lambda ds: setattr(ds, "SOPInstanceUID", generate_uid()))
    with pytest.raises(VolumeError, match="duplicate slice positions"):
        load_volume([*series, copy])


def test_mixed_orientations(series):
    _edit(series[4], lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0.9, -0.43589]))
    with pytest.raises(VolumeError, match="mixed orientations"):
        load_volume(series)


def test_mixed_sizes(series):
    def shrink(ds):
        ds.Rows, ds.Columns = 64, 64
        ds.PixelData = np.zeros((64, 64), dtype=np.uint16).tobytes()
    _edit(series[2], shrink)
    with pytest.raises(VolumeError, match="mixed sizes"):
        load_volume(series)


def test_mixed_pixel_spacing(series):
    _edit(series[2], lambda ds: setattr(ds, "PixelSpacing", [0.5, 0.5]))
    with pytest.raises(VolumeError, match="mixed pixel spacing"):
        load_volume(series)


def test_missing_pixel_data(series):
    _edit(series[6], lambda ds: delattr(ds, "PixelData"))
    with pytest.raises(VolumeError, match="missing pixel data"):
        load_volume(series)


def test_missing_position(series):
    _edit(series[1], lambda ds: delattr(ds, "ImagePositionPatient"))
    with pytest.raises(VolumeError, match="ImagePositionPatient"):
        load_volume(series)


def test_files_of_two_series(series, tmp_path):
    other = write_series(spec(slices=12), tmp_path / "other").paths
    with pytest.raises(VolumeError, match="different series"):
        load_volume([*series, *other])


def test_not_dicom_and_too_few(tmp_path, series):
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    with pytest.raises(VolumeError, match="not a readable DICOM file"):
        load_volume([*series, junk])
    with pytest.raises(VolumeError, match="at least 10"):
        load_volume(series[:3], min_slices=10)
    with pytest.raises(VolumeError, match="no files"):
        load_volume([])
