"""Typed settings of the pipeline, with a default for everything.

The node's config loader maps the ``[pipeline]`` TOML table (and its nested
tables, e.g. ``[pipeline.hu]``) onto these dataclasses by field name, so only
plain types are used here. Sources of the clinical defaults are cited beside
them; see ../shared/REFERENCES.md and pipeline/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

HemodynamicStatus = Literal["stable", "unstable", "unknown"]


@dataclass
class BackendSettings:
    """Which backend runs each stage (see pipeline.backends.BACKENDS)."""

    triage: str = "hu-baseline"
    segmentation: str = "hu-baseline"
    quantification: str = "voxel-count"
    reading: str = "rules-baseline"
    grading: str = "rule-table"
    report: str = "template"


@dataclass
class HuSettings:
    """Hounsfield-unit ranges used by the embedded baseline."""

    # Unclotted blood 30-45 HU, clotted blood ("sentinel clot") 45-70 HU:
    # hemorrhage exceeded 30 HU in all acute cases (Federle & Jeffrey,
    # Radiology 1983;148:187-92); clotted blood 40-70 HU (Shanmuganathan et
    # al., AJR 1993;161:65-9). Simple fluid (0-20 HU) stays below.
    blood_min: float = 30.0
    blood_max: float = 70.0
    # Active extravasation enhances like the aorta on the same phase (within
    # about 10-15 HU of it, ../shared/REFERENCES.md) and is usually >100 HU
    # (85-370 HU, mean 132: Shanmuganathan et al., AJR 1993;161:65-9). The
    # threshold is the higher of blush_min and aorta - blush_aorta_margin;
    # lower blushes are missed (Willmann et al., AJR 2002;179:437-44 measured
    # a mean of 155 HU against 199 HU in the aorta): a known limit.
    blush_min: float = 100.0
    blush_aorta_margin: float = 15.0
    # Used when no aorta is found (unusual coverage, no contrast): a conservative floor.
    blush_fallback_min: float = 180.0
    # Cortical bone is well above contrast-enhanced blood; used to exclude bone.
    bone_min: float = 500.0
    # Adipose tissue -190..-30 HU (Kvist et al., AJCN 1988; the range used in
    # body-composition CT), used to find the subcutaneous fat and the wall.
    fat_min: float = -190.0
    fat_max: float = -30.0
    # Anything above this is the patient (air and gas are about -1000 HU).
    body_min: float = -500.0
    # Enhancing liver / spleen parenchyma in the portal-venous phase.
    parenchyma_min: float = 80.0
    parenchyma_max: float = 150.0
    # Enhancing renal cortex and large vessels in the portal-venous phase.
    vessel_min: float = 150.0


@dataclass
class SegmentationSettings:
    """Morphology and size limits of the embedded segmentation."""

    # Working resolution of the 3D steps: about this pixel size and slice
    # spacing in mm (thin slices are merged); results are redrawn at full resolution.
    working_pixel_mm: float = 2.0
    working_slice_mm: float = 2.5
    # Blood components smaller than this are noise or partial volume.
    min_component_ml: float = 1.0
    min_blush_ml: float = 0.05
    # A blush component larger than this is a vessel, not a leak.
    max_blush_ml: float = 50.0
    # Blood within this distance of an organ counts as touching it.
    organ_contact_mm: float = 10.0
    # Abdominal wall thickness used when it cannot be measured.
    default_wall_mm: float = 10.0


@dataclass
class TriageSettings:
    """Per-slice scores and the slices handed to the reading stage."""

    # Score = 1 - exp(-suspicious area / scale): 0 for clean slices, -> 1.
    score_scale_mm2: float = 400.0
    threshold: float = 0.3
    max_slices: int = 16


@dataclass
class RiskTierSettings:
    """Risk tiers from the hemoperitoneum volume and spread.

    Defaults follow Federle & Jeffrey (Radiology 1983): small hemoperitoneum
    is one space (about 100-200 mL), moderate 250-500 mL or two spaces, large
    more than 500 mL or more than two spaces. EAST 2012: the amount of
    hemoperitoneum predicts the need for intervention in stable splenic
    injury, and a contrast blush is the sign for angiography, so any blush is
    'high'. (The hackathon code used <10/10-50/>=50 mL, its docs <5/5-500/>500.)
    """

    moderate_ml: float = 200.0
    high_ml: float = 500.0
    moderate_regions: int = 2
    high_regions: int = 3
    blush_is_high: bool = True


@dataclass
class PipelineSettings:
    backends: BackendSettings = field(default_factory=BackendSettings)
    hu: HuSettings = field(default_factory=HuSettings)
    segmentation: SegmentationSettings = field(default_factory=SegmentationSettings)
    triage: TriageSettings = field(default_factory=TriageSettings)
    risk_tiers: RiskTierSettings = field(default_factory=RiskTierSettings)
    # Stable / unstable / unknown; the Q&A request may override it per study.
    hemodynamic_status: HemodynamicStatus = "unknown"
    # Series with fewer slices are refused as not a volume.
    min_slices: int = 10
    # Relative tolerance on slice spacing before a step counts as a gap.
    gap_tolerance: float = 0.5

    def validate(self) -> list[str]:
        """Human-readable problems with cross-field constraints (empty if fine)."""
        from pipeline.backends import BACKENDS  # late: the backends import this module

        problems: list[str] = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        hu, seg, tiers = self.hu, self.segmentation, self.risk_tiers
        for stage, name in vars(self.backends).items():
            known = sorted(BACKENDS.get(stage, {}))
            need(name in known, f"pipeline.backends.{stage} = {name!r} is not one of {known}")
        need(hu.blood_min < hu.blood_max, "pipeline.hu.blood_max must be > blood_min")
        need(hu.blood_max < hu.blush_min, "pipeline.hu.blush_min must be > blood_max")
        need(hu.blush_min < hu.bone_min, "pipeline.hu.bone_min must be > blush_min")
        need(hu.fat_min < hu.fat_max < hu.blood_min, "pipeline.hu: need fat_min < fat_max < blood_min")
        need(hu.parenchyma_min < hu.parenchyma_max, "pipeline.hu.parenchyma_max must be > parenchyma_min")
        need(seg.working_pixel_mm > 0 and seg.working_slice_mm > 0,
             "pipeline.segmentation.working_pixel_mm and working_slice_mm must be > 0")
        need(seg.min_component_ml >= 0 and seg.min_blush_ml >= 0,
             "pipeline.segmentation minimum volumes must be >= 0")
        need(seg.max_blush_ml > seg.min_blush_ml, "pipeline.segmentation.max_blush_ml must be > min_blush_ml")
        need(tiers.moderate_ml > 0, "pipeline.risk_tiers.moderate_ml must be > 0")
        need(tiers.high_ml > tiers.moderate_ml, "pipeline.risk_tiers.high_ml must be > moderate_ml")
        need(tiers.high_regions > tiers.moderate_regions >= 1,
             "pipeline.risk_tiers: need high_regions > moderate_regions >= 1")
        need(0 < self.triage.threshold < 1, "pipeline.triage.threshold must be in (0, 1)")
        need(self.triage.max_slices >= 1, "pipeline.triage.max_slices must be >= 1")
        need(self.hemodynamic_status in ("stable", "unstable", "unknown"),
             "pipeline.hemodynamic_status must be stable, unstable or unknown")
        need(self.min_slices >= 2, "pipeline.min_slices must be >= 2")
        need(0 < self.gap_tolerance < 1, "pipeline.gap_tolerance must be in (0, 1)")
        return problems
