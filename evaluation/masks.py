"""Masks on the grid of an analysed series: NIfTI label maps and DICOM SEG.

Both are placed by patient coordinates, not by array order: a NIfTI file's affine (RAS)
and a SEG's references to the source instances. The result has the series' own shape
and slice order (Findings.series: slices cranial first), voxel for voxel with the labels
the pipeline made, so Dice and volumes compare like with like.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.labels import ACTIVE_EXTRAVASATION, CONTAINED_VASCULAR_INJURY, HEMORRHAGE

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def voxel_centres(series: dict[str, Any], k: int) -> np.ndarray:
    """Patient (LPS) coordinates of slice k's voxel centres, shape (rows, columns, 3)."""
    rows, cols = series["shape"][1:]
    _, row_mm, col_mm = series["spacing_mm"]
    origin = np.asarray(series["slices"][k]["position"], dtype=float)
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return (origin + j[..., None] * col_mm * np.asarray(series["row_direction"])
            + i[..., None] * row_mm * np.asarray(series["column_direction"]))


def load_nifti(path: Path, series: dict[str, Any]) -> np.ndarray:
    """A NIfTI label map resampled (nearest voxel) onto the series; outside it, 0."""
    import nibabel  # the evaluation extra

    image = nibabel.load(str(path))
    data = np.asanyarray(image.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path.name}: a 3D label map expected, not shape {data.shape}")
    to_index = np.linalg.inv(image.affine)
    out = np.zeros(series["shape"], dtype=np.uint8)
    for k in range(out.shape[0]):
        ras = voxel_centres(series, k) @ LPS_TO_RAS.T
        index = np.rint(ras @ to_index[:3, :3].T + to_index[:3, 3]).astype(np.int64)
        inside = np.all((index >= 0) & (index < np.array(data.shape)), axis=-1)
        picked = index[inside]
        out[k][inside] = data[picked[:, 0], picked[:, 1], picked[:, 2]]
    return out


def load_seg(path: Path, series: dict[str, Any]) -> np.ndarray:
    """A DICOM SEG as labels of the series (HEMORRHAGE, ACTIVE_EXTRAVASATION,
    CONTAINED_VASCULAR_INJURY by each segment's label; a segment named otherwise is blood)."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    label_of = {}
    for number in seg.segment_numbers:
        name = seg.get_segment_description(number).segment_label.lower()
        label_of[number] = (ACTIVE_EXTRAVASATION if "extravasation" in name
                            else CONTAINED_VASCULAR_INJURY if "vascular" in name else HEMORRHAGE)
    out = np.zeros(series["shape"], dtype=np.uint8)
    for k, ref in enumerate(series["slices"]):
        try:
            planes = seg.get_pixels_by_source_instance([ref["sop_instance_uid"]],
                                                       ignore_spatial_locations=True)
        except (ValueError, KeyError, IndexError):
            continue  # no frame of the SEG is on this slice
        for s, number in enumerate(seg.segment_numbers):
            out[k][planes[0, :, :, s] > 0] = label_of[number]
    return out


def load_mask(path: Path, series: dict[str, Any]) -> np.ndarray:
    if path.suffix == ".dcm":
        return load_seg(path, series)
    return load_nifti(path, series)
