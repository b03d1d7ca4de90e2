"""One CT series in, a HU volume with its geometry out.

Slices are ordered by their position along the slice normal, never by
InstanceNumber or file name; the slice spacing comes from those positions,
never from SliceThickness. HU come from each slice's (or frame's) own
RescaleSlope/Intercept. Single-frame CT and Enhanced (or Legacy Converted
Enhanced) CT multi-frame files are read; compressed transfer syntaxes are
decoded by pydicom's pixel handlers (pylibjpeg and its plugins).

Index 0 of the volume is the most cranial slice for axial series (the normal
is turned to point towards the head when it has a head-foot component).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import iter_pixels

HU_MIN, HU_MAX = -1024, 3071  # the usual 12-bit CT range; int16 keeps it exact
ORIENTATION_TOLERANCE = 1e-3
DUPLICATE_TOLERANCE_MM = 1e-3


class VolumeError(ValueError):
    """The series cannot be made into one consistent volume; the message says why."""


@dataclass(frozen=True)
class SliceRef:
    """Where one slice of the volume came from."""

    sop_instance_uid: str
    frame: int | None  # 1-based frame number in a multi-frame file, else None
    position: tuple[float, float, float]  # ImagePositionPatient (mm)


@dataclass
class Volume:
    """HU volume (slices, rows, columns) int16, and the geometry to place it."""

    hu: np.ndarray
    spacing: tuple[float, float, float]  # (slice, row, column) in mm
    row_direction: tuple[float, float, float]  # direction of increasing column index
    column_direction: tuple[float, float, float]  # direction of increasing row index
    normal: tuple[float, float, float]  # direction of increasing slice index is -normal
    slices: list[SliceRef]
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    modality: str

    @property
    def voxel_volume_mm3(self) -> float:
        dz, dy, dx = self.spacing
        return dz * dy * dx

    def patient_point(self, k: float, i: float, j: float) -> np.ndarray:
        """Patient (LPS, mm) coordinates of voxel (slice k, row i, column j)."""
        origin = np.asarray(self.slices[0].position)
        dz, dy, dx = self.spacing
        return (origin + j * dx * np.asarray(self.row_direction)
                + i * dy * np.asarray(self.column_direction)
                - k * dz * np.asarray(self.normal))

    def geometry_dict(self) -> dict:
        return {
            "shape": list(self.hu.shape),
            "spacing_mm": list(self.spacing),
            "voxel_volume_mm3": self.voxel_volume_mm3,
            "row_direction": list(self.row_direction),
            "column_direction": list(self.column_direction),
            "slice_order": "descending position along the normal (cranial first for axial)",
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "frame_of_reference_uid": self.frame_of_reference_uid,
        }


@dataclass(frozen=True)
class _FrameHeader:
    path: Path
    frame: int | None
    series_instance_uid: str
    sop_instance_uid: str
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    size: tuple[int, int]
    slope: float
    intercept: float


def load_volume(paths: Sequence[Path | str], min_slices: int = 2,
                gap_tolerance: float = 0.5, *, headers: Mapping[Path, Dataset] | None = None,
                decoded: Mapping[Path, np.ndarray] | None = None) -> Volume:
    """Read the files of one series into a Volume, or raise VolumeError.

    headers: headers already read (read_header), by path; decoded: HU already decoded
    (decode_hu, e.g. while the series was arriving), by path. The others are read here;
    either way the volume is the same.
    """
    if not paths:
        raise VolumeError("no files given")
    headers, decoded = headers or {}, decoded or {}
    frame_headers: list[_FrameHeader] = []
    first: Dataset | None = None
    for path in map(Path, paths):
        ds = headers.get(path)
        if ds is None:
            ds = read_header(path)
        if first is None:
            first = ds
        frame_headers.extend(_frame_headers(path, ds))
    assert first is not None
    _check_consistent(frame_headers)
    if len(frame_headers) < min_slices:
        raise VolumeError(f"only {len(frame_headers)} slice(s); at least {min_slices} needed for a volume")

    row_dir, col_dir = frame_headers[0].orientation[:3], frame_headers[0].orientation[3:]
    normal = _unit(np.cross(row_dir, col_dir))
    if normal[2] < 0:  # point towards the head, so index 0 is cranial for axial series
        normal = -normal
    heights = np.array([float(h.position @ normal) for h in frame_headers])
    order = np.argsort(-heights, kind="stable")
    frame_headers = [frame_headers[n] for n in order]
    slice_spacing = _slice_spacing(heights[order], gap_tolerance)

    rows, cols = frame_headers[0].size
    hu = np.empty((len(frame_headers), rows, cols), dtype=np.int16)
    _fill_pixels(hu, frame_headers, decoded)
    dy, dx = frame_headers[0].pixel_spacing
    return Volume(
        hu=hu,
        spacing=(float(slice_spacing), float(dy), float(dx)),
        row_direction=tuple(map(float, row_dir)),
        column_direction=tuple(map(float, col_dir)),
        normal=tuple(map(float, normal)),
        slices=[SliceRef(h.sop_instance_uid, h.frame, tuple(map(float, h.position)))
                for h in frame_headers],
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        series_instance_uid=str(first.get("SeriesInstanceUID", "")),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        modality=str(first.get("Modality", "")),
    )


def read_hu(path: Path | str) -> np.ndarray:
    """Every frame of one file in HU, (frames, rows, cols) int16, in file order: for
    slices taken one at a time rather than as a series (labelled slices, say)."""
    path = Path(path)
    return decode_hu(path, read_header(path))


def decode_hu(path: Path, header: Dataset) -> np.ndarray:
    """Every frame of one file in HU, (frames, rows, cols) int16, in file order, exactly as
    load_volume puts them in the volume (header: the file's, from read_header)."""
    frames = list(_frame_headers(path, header))
    rows, cols = frames[0].size
    hu = np.empty((len(frames), rows, cols), dtype=np.int16)
    for n, (_, values) in enumerate(_decoded_frames(path, frames)):
        hu[n] = values
    return hu


def read_header(path: Path) -> Dataset:
    """The file's header, pixel data left unread."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises several types for unreadable files
        raise VolumeError(f"{path.name}: not a readable DICOM file ({exc})") from exc


def _number_list(value: object, count: int, what: str, path: Path) -> np.ndarray:
    try:
        numbers = np.array([float(v) for v in value], dtype=float)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        numbers = np.array([])
    if numbers.size != count:
        raise VolumeError(f"{path.name}: missing or malformed {what}")
    return numbers


def _frame_headers(path: Path, ds: Dataset) -> Iterator[_FrameHeader]:
    """One header per frame: single-frame files have one, multi-frame many."""
    uid = str(ds.get("SOPInstanceUID", path.name))
    series = str(ds.get("SeriesInstanceUID", ""))
    size = (int(ds.get("Rows", 0)), int(ds.get("Columns", 0)))
    if "PerFrameFunctionalGroupsSequence" not in ds:
        yield _FrameHeader(
            path, None, series, uid,
            _number_list(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", path),
            _number_list(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", path),
            tuple(_number_list(ds.get("PixelSpacing"), 2, "PixelSpacing", path)),
            size, float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))
        return
    shared = ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]

    def group(frame: Dataset, name: str) -> Dataset | None:
        for source in (frame, shared):
            if name in source and len(source[name].value):
                return source[name].value[0]
        return None

    for number, frame in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
        plane = group(frame, "PlanePositionSequence")
        orient = group(frame, "PlaneOrientationSequence")
        measures = group(frame, "PixelMeasuresSequence")
        rescale = group(frame, "PixelValueTransformationSequence")
        yield _FrameHeader(
            path, number, series, uid,
            _number_list(plane and plane.get("ImagePositionPatient"), 3,
                         f"ImagePositionPatient of frame {number}", path),
            _number_list(orient and orient.get("ImageOrientationPatient"), 6,
                         f"ImageOrientationPatient of frame {number}", path),
            tuple(_number_list(measures and measures.get("PixelSpacing"), 2,
                               f"PixelSpacing of frame {number}", path)),
            size,
            float(rescale.get("RescaleSlope", 1)) if rescale else 1.0,
            float(rescale.get("RescaleIntercept", 0)) if rescale else 0.0)


def _check_consistent(headers: list[_FrameHeader]) -> None:
    series = {h.series_instance_uid for h in headers}
    if len(series) > 1:
        raise VolumeError(f"files from {len(series)} different series were given together")
    reference = headers[0]
    for h in headers:
        if not np.allclose(h.orientation, reference.orientation, atol=ORIENTATION_TOLERANCE):
            raise VolumeError(f"mixed orientations: {h.path.name} has ImageOrientationPatient "
                              f"{list(h.orientation)}, {reference.path.name} has {list(reference.orientation)}")
        if h.size != reference.size:
            raise VolumeError(f"mixed sizes: {h.path.name} is {h.size[0]}x{h.size[1]}, "
                              f"{reference.path.name} is {reference.size[0]}x{reference.size[1]}")
        if not np.allclose(h.pixel_spacing, reference.pixel_spacing, rtol=1e-3):
            raise VolumeError(f"mixed pixel spacing: {h.path.name} has {list(h.pixel_spacing)}, "
                              f"{reference.path.name} has {list(reference.pixel_spacing)}")
    if min(reference.size) < 1:
        raise VolumeError(f"{reference.path.name}: Rows/Columns missing")


def _slice_spacing(sorted_heights: np.ndarray, gap_tolerance: float) -> float:
    """Median step between positions; duplicates and gaps are errors."""
    steps = -np.diff(sorted_heights)
    if np.any(steps < DUPLICATE_TOLERANCE_MM):
        at = float(sorted_heights[int(np.argmin(steps))])
        raise VolumeError(f"duplicate slice positions: two slices at {at:.3f} mm along the normal")
    spacing = float(np.median(steps))
    bad = np.abs(steps - spacing) > gap_tolerance * spacing
    if np.any(bad):
        n = int(np.argmax(bad))
        kind = "gap" if steps[n] > spacing else "uneven spacing"
        raise VolumeError(f"{kind} in the series: {steps[n]:.3f} mm between slices at "
                          f"{sorted_heights[n]:.3f} and {sorted_heights[n + 1]:.3f} mm "
                          f"(usual spacing {spacing:.3f} mm)")
    return spacing


def _fill_pixels(hu: np.ndarray, headers: list[_FrameHeader],
                 decoded: Mapping[Path, np.ndarray]) -> None:
    """Each file's frames into their slots: from decoded where it has the file, else
    decoded here once, frame by frame, straight into its slot."""
    slot_of = {(h.path, h.frame): n for n, h in enumerate(headers)}
    by_path: dict[Path, list[_FrameHeader]] = {}
    for h in headers:
        by_path.setdefault(h.path, []).append(h)
    for path, frames in by_path.items():
        done = decoded.get(path)
        if done is not None and done.shape == (len(frames), *hu.shape[1:]):
            for n, frame in enumerate(frames):  # file order, as decode_hu wrote them
                hu[slot_of[(path, frame.frame)]] = done[n if frame.frame is None else frame.frame - 1]
            continue
        for frame, values in _decoded_frames(path, frames):
            hu[slot_of[(path, frame.frame)]] = values


def _decoded_frames(path: Path, frames: list[_FrameHeader]
                    ) -> Iterator[tuple[_FrameHeader, np.ndarray]]:
    """The one decoder: each frame of one file (frames: its headers) in HU, int16."""
    if frames[0].frame is None:
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds:
            raise VolumeError(f"missing pixel data in {path.name}")
        yield frames[0], _to_hu(ds.pixel_array, frames[0])
        return
    header_of = {h.frame: h for h in frames}
    try:
        for number, pixels in enumerate(iter_pixels(path), start=1):
            yield header_of[number], _to_hu(pixels, header_of[number])
    except (AttributeError, KeyError, ValueError) as exc:
        raise VolumeError(f"missing or unreadable pixel data in {path.name} ({exc})") from exc


def _to_hu(pixels: np.ndarray, header: _FrameHeader) -> np.ndarray:
    if pixels.shape != header.size:
        raise VolumeError(f"{header.path.name}: pixel data is {pixels.shape}, expected {header.size}")
    if header.slope == 1 and float(header.intercept).is_integer():
        # The usual case, in integers: several times faster than floats.
        values = np.add(pixels, int(header.intercept), dtype=np.int32)
    else:
        values = np.rint(pixels.astype(np.float32) * header.slope + header.intercept)
    np.clip(values, HU_MIN, HU_MAX, out=values)
    return values.astype(np.int16)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)
