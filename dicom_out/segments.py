"""Which segments a SEG holds, and the map of their voxels, from the pipeline's label volume.

Shared by the SEG (pixels, descriptions) and the SR (one measurement group per
segment, referencing it by number).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.sr.coding import Code

from dicom_out import codes
from pipeline.findings import Findings
from pipeline.labels import ACTIVE_EXTRAVASATION, CONTAINED_VASCULAR_INJURY, HEMORRHAGE


@dataclass(frozen=True)
class FindingType:
    key: str  # the key of Findings.volumes_ml, and of tracking UIDs
    label: str  # SegmentLabel and SR Tracking Identifier
    description: str  # SegmentDescription: what the voxels hold
    property_type: Code
    rgb: tuple[int, int, int]  # display colour, stored as CIELab
    label_values: tuple[int, ...]  # label volume values that belong to it


# The two segments never overlap (each voxel has one label value): viewers that
# compute statistics per labelmap, OHIF among them, get both volumes right, and the
# SR states their total separately.
HEMORRHAGE_FINDING = FindingType(
    "non_enhancing_hemorrhage", "Hemorrhage, non-enhancing",
    "Blood-density material without contrast (hemoperitoneum, hematoma, clot); "
    "the active extravasation within it is its own segment", codes.HEMORRHAGE,
    # Recommended display colour of Hemorrhage (SCT 50960005) in the DICOM master
    # segmentation terminology (dcmqi/3D Slicer SegmentationCategoryTypeModifier-DICOM-Master).
    (188, 65, 28),
    (HEMORRHAGE,))
ACTIVE_EXTRAVASATION_FINDING = FindingType(
    "active_extravasation", "Active extravasation", "Contrast-density focus (blush) within "
    "blood: suspected active bleeding", codes.EXTRAVASATION, (255, 220, 0),
    (ACTIVE_EXTRAVASATION,))
# Only when another phase showed a focus kept its size and followed the vessels.
CONTAINED_VASCULAR_INJURY_FINDING = FindingType(
    "contained_vascular_injury", "Contained vascular injury",
    "Contrast-density focus that kept its size and followed the aorta across the study's phases: "
    "pseudoaneurysm (contained vascular injury)", codes.PSEUDOANEURYSM, (200, 60, 220),
    (CONTAINED_VASCULAR_INJURY,))
OPTIONAL_FINDINGS = (ACTIVE_EXTRAVASATION_FINDING, CONTAINED_VASCULAR_INJURY_FINDING)


@dataclass(frozen=True)
class Segment:
    number: int  # 1-based Segment Number
    finding: FindingType
    volume_ml: float  # from Findings.volumes_ml, the number the report states
    # Whether any voxel holds it: from the label volume when there is one (a tiny volume
    # can round to 0.0 mL), else from volume_ml.
    found: bool

    @property
    def empty(self) -> bool:
        return not self.found

    @property
    def is_extravasation(self) -> bool:
        return self.finding is ACTIVE_EXTRAVASATION_FINDING


def planned_segments(findings: Findings) -> list[Segment]:
    """Non-enhancing hemorrhage always (empty when none was found: an explicit negative result the
    viewer shows), active extravasation only when the pipeline found some.

    Presence comes from the label volume when there is one, else from Findings.volumes_ml.
    """
    labels = findings.labels
    if labels is not None and list(labels.shape) != list(findings.series["shape"]):
        raise ValueError(f"label volume shape {labels.shape} differs from the series "
                         f"shape {findings.series['shape']}")
    if labels is not None:
        present = label_values(labels)
        optional = [f for f in OPTIONAL_FINDINGS if f.label_values[0] in present]
    else:
        optional = [f for f in OPTIONAL_FINDINGS if findings.volumes_ml.get(f.key, 0.0) > 0]

    def found(finding: FindingType, volume_ml: float) -> bool:
        if labels is None:
            return volume_ml > 0
        return any(value in present for value in finding.label_values)

    volumes = [float(findings.volumes_ml.get(f.key, 0.0)) for f in (HEMORRHAGE_FINDING, *optional)]
    return [Segment(n, f, volume, found(f, volume))
            for n, (f, volume) in enumerate(zip((HEMORRHAGE_FINDING, *optional), volumes), start=1)]


def labelled_slices(labels: np.ndarray) -> np.ndarray:
    """Whether each slice of the label volume holds any label (bool per slice); a byte
    volume is read eight bytes at a time (a 300-slice 512 x 512 volume in ~10 ms)."""
    flat = labels.reshape(len(labels), -1)
    if flat.dtype.itemsize == 1 and flat.shape[1] % 8 == 0 and flat.flags.c_contiguous:
        flat = flat.view(np.uint64)
    return flat.any(axis=1)


def label_values(labels: np.ndarray) -> set[int]:
    """The label values the volume holds, background (0) aside; slice by slice, so that no
    copy of the labelled slices is made (tens of MB, each page of it faulted in anew)."""
    present: set[int] = set()
    for k in np.flatnonzero(labelled_slices(labels)):
        present.update(np.flatnonzero(np.bincount(labels[k].ravel())).tolist())
    return present - {0}


def segment_map(labels: np.ndarray, segments: list[Segment],
                slices: np.ndarray | None = None) -> np.ndarray:
    """The number of each voxel's segment (0: none), uint8, over these slices (default all):
    the segments never overlap, so one map holds them all (highdicom checks it with one max()
    where a stack of masks costs it a sum over the stack)."""
    picked = labels if slices is None else labels[slices]
    size = 256 if picked.dtype == np.uint8 else int(picked.max(initial=0)) + 1
    lookup = np.zeros(max(size, *(v + 1 for s in segments for v in s.finding.label_values)),
                      dtype=np.uint8)
    for segment in segments:
        lookup[list(segment.finding.label_values)] = segment.number
    return lookup[picked]
