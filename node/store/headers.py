"""The few header values the node keeps per instance, for series selection.

Kept in the index so that deciding whether a series fits the pipeline needs no
second read of the files. No patient attributes are extracted.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from pydicom.dataset import Dataset


def _floats(value: Any) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return None


def _first_item(ds: Dataset, *path: str) -> Dataset | None:
    """Follow sequence keywords, taking the first item of each."""
    current: Any = ds
    for keyword in path:
        seq = getattr(current, keyword, None)
        if not seq:
            return None
        current = seq[0]
    return current


@dataclass
class InstanceHeader:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str = ""
    series_description: str = ""
    image_type: list[str] = field(default_factory=list)
    kernel: str = ""
    rows: int | None = None
    columns: int | None = None
    frames: int = 1
    # What decoding costs: bytes per pixel sample, samples per pixel.
    bits_allocated: int = 16
    samples_per_pixel: int = 1
    position: list[float] | None = None  # ImagePositionPatient (first frame)
    orientation: list[float] | None = None  # ImageOrientationPatient
    pixel_spacing: list[float] | None = None
    images_in_acquisition: int | None = None
    # Enhanced CT: the positions of every frame.
    frame_positions: list[list[float]] | None = None

    def geometry(self) -> dict[str, Any]:
        """The per-instance part stored in the index (serialised at once: the lists are not
        copied, as dataclasses.asdict would, once per received instance)."""
        return {name: getattr(self, name) for name in _GEOMETRY_FIELDS}


_GEOMETRY_FIELDS = tuple(f.name for f in fields(InstanceHeader)
                         if f.name not in ("study_uid", "series_uid", "sop_uid", "sop_class_uid"))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def extract(ds: Dataset) -> InstanceHeader:
    """Read the selection-relevant values; missing ones stay empty."""
    image_type = ds.get("ImageType")
    header = InstanceHeader(
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        sop_uid=str(ds.get("SOPInstanceUID", "")),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        modality=str(ds.get("Modality", "") or ""),
        series_description=str(ds.get("SeriesDescription", "") or ""),
        image_type=[str(v) for v in image_type] if image_type is not None and not isinstance(
            image_type, str) else ([str(image_type)] if image_type else []),
        kernel=_text(ds.get("ConvolutionKernel")),
        rows=int(ds.Rows) if "Rows" in ds else None,
        columns=int(ds.Columns) if "Columns" in ds else None,
        frames=int(ds.get("NumberOfFrames", 1) or 1),
        bits_allocated=int(ds.get("BitsAllocated") or 16),
        samples_per_pixel=int(ds.get("SamplesPerPixel") or 1),
        position=_floats(ds.get("ImagePositionPatient")),
        orientation=_floats(ds.get("ImageOrientationPatient")),
        pixel_spacing=_floats(ds.get("PixelSpacing")),
    )
    try:
        if ds.get("ImagesInAcquisition") is not None:
            header.images_in_acquisition = int(ds.ImagesInAcquisition)
    except (TypeError, ValueError):
        header.images_in_acquisition = None
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        _enhanced_geometry(ds, header)
    return header


def _enhanced_geometry(ds: Dataset, header: InstanceHeader) -> None:
    """Enhanced CT keeps geometry in functional groups, per frame or shared."""
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []

    def lookup(item: Dataset | None, group: str, keyword: str) -> list[float] | None:
        if item is None:
            return None
        inner = _first_item(item, group)
        return _floats(inner.get(keyword)) if inner is not None else None

    first = per_frame[0] if per_frame else None
    header.orientation = (lookup(shared, "PlaneOrientationSequence", "ImageOrientationPatient")
                          or lookup(first, "PlaneOrientationSequence", "ImageOrientationPatient"))
    header.pixel_spacing = (lookup(shared, "PixelMeasuresSequence", "PixelSpacing")
                            or lookup(first, "PixelMeasuresSequence", "PixelSpacing"))
    positions = [lookup(item, "PlanePositionSequence", "ImagePositionPatient") for item in per_frame]
    if positions and all(p is not None for p in positions):
        header.frame_positions = positions  # type: ignore[assignment]
        header.position = positions[0]
    if header.image_type == [] and "FrameType" in ds:
        header.image_type = [str(v) for v in ds.FrameType]
