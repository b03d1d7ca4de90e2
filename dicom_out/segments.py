"""Which segments a SEG holds, and their masks, from the pipeline's label volume.

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
    # bool (slices, rows, columns) in volume order, or the slices planned_segments was
    # asked for, in that order; None without labels
    mask: np.ndarray | None
    volume_ml: float  # from Findings.volumes_ml, the number the report states

    @property
    def empty(self) -> bool:
        return not self.mask.any() if self.mask is not None else self.volume_ml <= 0

    @property
    def is_extravasation(self) -> bool:
        return self.finding is ACTIVE_EXTRAVASATION_FINDING


def planned_segments(findings: Findings, masks: bool = True,
                     slices: np.ndarray | None = None) -> list[Segment]:
    """Non-enhancing hemorrhage always (empty when none was found: an explicit negative result the
    viewer shows), active extravasation only when the pipeline found some.

    Presence comes from the label volume when there is one (a tiny volume can
    round to 0.0 mL), else from Findings.volumes_ml; masks only from labels, and
    only when asked (the SR needs none). slices: the volume slice indices the
    masks cover, in that order (default: all); they must include every slice
    with a label, or Segment.empty would be wrong.
    """
    labels = findings.labels
    if labels is not None and list(labels.shape) != list(findings.series["shape"]):
        raise ValueError(f"label volume shape {labels.shape} differs from the series "
                         f"shape {findings.series['shape']}")
    if labels is not None:
        present = set(np.unique(labels[labels.reshape(len(labels), -1).any(axis=1)]).tolist())
        optional = [f for f in OPTIONAL_FINDINGS if f.label_values[0] in present]
    else:
        optional = [f for f in OPTIONAL_FINDINGS if findings.volumes_ml.get(f.key, 0.0) > 0]
    found = [HEMORRHAGE_FINDING, *optional]

    def mask(finding: FindingType) -> np.ndarray | None:
        if not masks or labels is None:
            return None
        picked = labels if slices is None else labels[slices]
        return np.isin(picked, finding.label_values, kind="table")

    return [Segment(n, f, mask(f), float(findings.volumes_ml.get(f.key, 0.0)))
            for n, f in enumerate(found, start=1)]
