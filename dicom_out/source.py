"""The source series, put in the order of the pipeline's label volume.

Findings.series['slices'] lists the source frame of every slice of the label
volume (SOP Instance UID, and frame number for multi-frame files). highdicom
wants the mask frames in the order of its source images (single-frame files)
or of the frames of the one multi-frame file, so the mask is reordered here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset

from pipeline.findings import Findings


@dataclass(frozen=True)
class SourceImages:
    datasets: list[Dataset]  # what highdicom gets as source_images
    volume_index: np.ndarray  # volume slice index of each SEG input frame, in source order

    def reorder(self, volume: np.ndarray) -> np.ndarray:
        """A (slices, ...) array in volume order -> the same in source order."""
        return volume[self.volume_index]


def source_images(findings: Findings, datasets: Sequence[Dataset]) -> SourceImages:
    """Match the given datasets to the label volume's slices (any input order)."""
    slices = findings.series.get("slices") or []
    if not slices:
        raise ValueError("Findings.series has no 'slices': the source slices are unknown")
    series_uid = findings.series.get("series_instance_uid")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets
              if str(ds.get("SeriesInstanceUID", "")) == series_uid}
    if any(s.get("frame") is not None for s in slices):
        return _multi_frame(slices, by_uid)
    missing = [s["sop_instance_uid"] for s in slices if s["sop_instance_uid"] not in by_uid]
    if missing:
        raise ValueError(f"{len(missing)} source instance(s) of series {series_uid} are missing "
                         f"from source_datasets, e.g. {missing[0]}")
    return SourceImages([by_uid[s["sop_instance_uid"]] for s in slices],
                        np.arange(len(slices)))


def _multi_frame(slices: list[dict], by_uid: dict[str, Dataset]) -> SourceImages:
    uids = {s["sop_instance_uid"] for s in slices}
    if len(uids) != 1 or next(iter(uids)) not in by_uid:
        raise ValueError("a multi-frame source must be one file holding every slice of the volume")
    dataset = by_uid[next(iter(uids))]
    frames = int(dataset.get("NumberOfFrames", 1))
    if sorted(s["frame"] for s in slices) != list(range(1, frames + 1)):
        raise ValueError("the volume does not use every frame of the multi-frame source once")
    index = np.empty(frames, dtype=int)
    for k, s in enumerate(slices):
        index[s["frame"] - 1] = k
    return SourceImages([dataset], index)
