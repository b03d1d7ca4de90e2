"""The key slices of a series: where the most blood and the blush are, a handful,
in anatomical order (cranial first, the order of the label volume).

Shared by the summary Secondary Capture images (which draw them) and the Key
Object Selection (which points the viewer to them in the source series).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array

from dicom_out.segments import labelled_slices
from pipeline.findings import Findings
from pipeline.labels import ACTIVE_EXTRAVASATION, CONTAINED_VASCULAR_INJURY

KEY_SLICE_COUNT = 6


@dataclass(frozen=True)
class KeySlice:
    index: int  # slice of the label volume (volume order: cranial first)
    dataset: Dataset  # the source instance's header
    frame: int | None  # 1-based frame of a multi-frame source, else None
    blood_voxels: int  # all blood, blush included
    blush_voxels: int


# HU of one key slice, (rows, columns) in the source's pixel order.
SliceReader = Callable[[KeySlice], np.ndarray]


def key_slices(findings: Findings, source_datasets: Sequence[Dataset],
               count: int = KEY_SLICE_COUNT) -> list[KeySlice]:
    """Up to count slices with blood, in volume order; none without labels or blood."""
    if findings.labels is None:
        return []
    labels = findings.labels
    blood, blush = np.zeros(len(labels), dtype=int), np.zeros(len(labels), dtype=int)
    for k in np.flatnonzero(labelled_slices(labels)):  # a bleed spans a fraction of the slices
        blood[k] = np.count_nonzero(labels[k])
        blush[k] = np.count_nonzero(np.isin(labels[k], (ACTIVE_EXTRAVASATION, CONTAINED_VASCULAR_INJURY)))
    slices = findings.series["slices"]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in source_datasets}
    missing = {s["sop_instance_uid"] for s in slices} - set(by_uid)
    if missing:
        raise ValueError(f"{len(missing)} source instance(s) are missing from source_datasets, "
                         f"e.g. {next(iter(missing))}")
    return [KeySlice(k, by_uid[slices[k]["sop_instance_uid"]], slices[k].get("frame"),
                     int(blood[k]), int(blush[k]))
            for k in choose(blood, blush, count)]


def choose(blood: np.ndarray, blush: np.ndarray, count: int) -> list[int]:
    """Slice indices, ascending: up to half of them where the blush is largest, the
    rest where the blood is, each at least 1/count of the slices with blood away from
    the others, so that they show the extent of the bleed rather than one spot
    (closer only when the bleed spans too few slices)."""
    with_blood = np.flatnonzero(blood)
    if not len(with_blood) or count < 1:
        return []
    gap = max(1, len(with_blood) // count)
    by_blush = sorted(np.flatnonzero(blush), key=lambda k: (-blush[k], k))
    by_blood = sorted(with_blood, key=lambda k: (-blood[k], k))
    chosen: list[int] = []

    def take(candidates: list[int], limit: int, spaced: bool) -> None:
        for k in candidates:
            if len(chosen) >= limit:
                return
            if k not in chosen and (not spaced or all(abs(k - c) >= gap for c in chosen)):
                chosen.append(int(k))

    take(by_blush, (count + 1) // 2, spaced=True)
    take(by_blood, count, spaced=True)
    take(by_blood, count, spaced=False)  # a bleed on too few slices to keep them apart
    return sorted(chosen)


def read_from_file(key: KeySlice) -> np.ndarray:
    """The HU of one key slice, decoded alone from the file its header was read from
    (pydicom.dcmread(path) notes the path in Dataset.filename)."""
    path = getattr(key.dataset, "filename", None)
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise ValueError(f"instance {key.dataset.SOPInstanceUID} was not read from a file: "
                         "give build_outputs a read_slice to get its pixels")
    if key.frame is None:
        pixels = pydicom.dcmread(path).pixel_array
    else:
        pixels = pixel_array(path, index=key.frame - 1)
    slope, intercept = _rescale(key.dataset, key.frame)
    return pixels.astype(np.float32) * slope + intercept


def _rescale(header: Dataset, frame: int | None) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept of a slice or frame (1 and 0 when absent)."""
    sources: list[Dataset] = []
    if frame is not None:  # an enhanced CT states it per frame, or once for all frames
        for name, item in (("PerFrameFunctionalGroupsSequence", frame - 1),
                           ("SharedFunctionalGroupsSequence", 0)):
            groups = header.get(name) or []
            if len(groups) > item:
                sources += groups[item].get("PixelValueTransformationSequence", [])
    sources.append(header)
    for source in sources:
        if "RescaleSlope" in source or "RescaleIntercept" in source:
            return float(source.get("RescaleSlope", 1) or 1), float(source.get("RescaleIntercept", 0))
    return 1.0, 0.0
