"""Embedded triage: a suspicion score per slice from HU statistics.

Blood-range voxels in the peritoneal cavity count fully near a solid organ
(where injuries bleed) and half elsewhere; contrast-range voxels next to
them, outside organs and vessels, count four times (a possible blush). The
score saturates: 1 - exp(-area / scale).
"""

from __future__ import annotations

import numpy as np

from pipeline import morphology
from pipeline.anatomy import SOLID_CODES
from pipeline.findings import TriageResult
from pipeline.settings import PipelineSettings
from pipeline.stages import StageContext

FAR_FROM_ORGAN_WEIGHT = 0.5
BRIGHT_WEIGHT = 4.0


def choose_slices(scores: np.ndarray, threshold: float, max_slices: int) -> list[int]:
    """The highest-scoring slices above threshold, returned in anatomical order."""
    above = np.flatnonzero(scores >= threshold)
    best = above[np.argsort(-scores[above], kind="stable")][:max_slices]
    return sorted(int(k) for k in best)


class HuTriage:
    name = "hu-baseline"
    version = "1.0"
    description = "embedded CPU baseline, no model weights: HU statistics per slice"

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings

    def run(self, context: StageContext) -> TriageResult:
        hu_s, t = self.settings.hu, self.settings.triage
        anatomy = context.anatomy
        hu, cavity = anatomy.hu, anatomy.cavity()
        solid = np.isin(anatomy.regions, SOLID_CODES)
        reach = max(1, int(round(self.settings.segmentation.organ_contact_mm / anatomy.spacing[1])))
        near_organ = morphology.dilate(solid, morphology.in_plane(reach))
        blood = morphology.open_(cavity & (hu >= hu_s.blood_min) & (hu <= hu_s.blood_max),
                                 morphology.in_plane(1))
        bright = (cavity & ~solid & (hu >= hu_s.blush_min) & (hu < hu_s.bone_min)
                  & morphology.dilate(blood, morphology.in_plane(1)))
        pixel_mm2 = anatomy.spacing[1] * anatomy.spacing[2]
        area = pixel_mm2 * (np.count_nonzero(blood & near_organ, axis=(1, 2))
                            + FAR_FROM_ORGAN_WEIGHT * np.count_nonzero(blood & ~near_organ, axis=(1, 2))
                            + BRIGHT_WEIGHT * np.count_nonzero(bright, axis=(1, 2)))
        # One score per full-resolution slice: merged thin slices share theirs.
        area = np.repeat(area, anatomy.z_factor)[:anatomy.slices]
        scores = 1.0 - np.exp(-area / t.score_scale_mm2)
        return TriageResult(scores=[round(float(s), 4) for s in scores],
                            chosen=choose_slices(scores, t.threshold, t.max_slices),
                            threshold=t.threshold, method=self.description)
