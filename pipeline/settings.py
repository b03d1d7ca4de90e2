"""Typed settings of the pipeline, with a default for everything.

The node's config loader maps the ``[pipeline]`` TOML table (and its nested
tables, e.g. ``[pipeline.hu]``) onto these dataclasses by field name, so only
plain types are used here. Sources of the clinical defaults are cited beside
them; see ../shared/REFERENCES.md and pipeline/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.registry import ANSWERERS, BACKENDS

HemodynamicStatus = Literal["stable", "unstable", "unknown"]
QUANTIZATIONS = ("auto", "4bit", "8bit", "bf16", "fp32")


@dataclass
class BackendSettings:
    """Which backend runs each stage (see pipeline.registry.BACKENDS)."""

    triage: str = "hu-baseline"
    segmentation: str = "hu-baseline"
    quantification: str = "voxel-count"
    reading: str = "rules-baseline"
    grading: str = "rule-table"
    report: str = "template"
    # Q&A answerer (pipeline.registry.ANSWERERS): grounded (embedded) or medgemma.
    answering: str = "grounded"


@dataclass
class HuSettings:
    """Hounsfield-unit ranges used by the embedded baseline."""

    # Unclotted blood 30-45 HU, clotted blood ("sentinel clot") 45-70 HU:
    # hemorrhage exceeded 30 HU in all acute cases (Federle & Jeffrey,
    # Radiology 1983;148:187-92); clotted blood 40-70 HU (Shanmuganathan et
    # al., AJR 1993;161:65-9). Simple fluid (0-20 HU) stays below.
    blood_min: float = 30.0
    blood_max: float = 70.0
    # Acute blood can be lower: unclotted or diluted (by ascites, urine,
    # lavage or resuscitation), 24% of hemoperitoneum sites under 20 HU in
    # Levine et al. (AJR 1996;166:1089-93); Lubner et al. (Radiographics
    # 2007;27:109-25) review the spread. From blood_low_min to blood_min a voxel
    # counts only inside a thick collection (segmentation.low_blood_core_mm):
    # the same HU are partial volume at organ tips and edges against
    # fluid-filled bowel, and ascites or bowel fluid of 20-30 HU look the same.
    blood_low_min: float = 20.0
    # Active extravasation 85-370 HU, mean 132, against clotted blood 40-70 HU
    # (Shanmuganathan et al., AJR 1993;161:65-9): blush_min is the lowest
    # extravasation there and above every clot. It enhances less than the
    # aorta more often than not (mean 155 HU against 199 HU in the aorta,
    # Willmann et al., AJR 2002;179:437-44; "within 10-15 HU of the aorta" has
    # no primary source), so the aorta sets no floor. Inside an enhancing
    # organ a focus must stand out from the parenchyma round it: the 90th
    # percentile HU of the organ a few millimetres round the focus plus
    # blush_organ_margin (above noise and the parenchyma's unevenness; no
    # published figure, a design choice: a blush is seen as denser than the
    # organ round it, and the brightest tenth of that is the reference).
    blush_min: float = 85.0
    blush_organ_margin: float = 20.0
    # Extravasated contrast is diluted blood-pool contrast: a focus denser than
    # both blush_max (Shanmuganathan's densest was 370 HU) and the same phase's
    # blood pool (aorta, or the portal vein where found) plus blush_above_pool
    # is calcification, bone, or oral or excreted contrast.
    blush_max: float = 400.0
    blush_above_pool: float = 100.0
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
    # Blood within this distance of an organ counts as touching it (adjacency).
    organ_contact_mm: float = 10.0
    # Blood deep inside an organ's outline calls the organ injured only from this
    # much on (or with a blush there): a collection's rim blurred into the organ's
    # edge is not an injury.
    min_intraparenchymal_ml: float = 1.0
    # Abdominal wall thickness used when it cannot be measured.
    default_wall_mm: float = 10.0
    # Blood of hu.blood_low_min-blood_min HU counts only where the collection
    # holds a core this thick in-plane (and three working slices deep): partial
    # volume at organ edges and tips is thinner.
    low_blood_core_mm: float = 10.0
    # Contrast continuous over more than this is a vessel or a bowel lumen, not
    # a focal blush (connected at a lower threshold, see pipeline/extravasation.py).
    max_blush_length_mm: float = 50.0


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
    # A compartment counts as a space with blood from this much on: a sliver of a
    # collection that crosses into the next compartment does not add a space.
    min_space_ml: float = 5.0


# Texts MedSigLIP scores each slice against (zero-shot). Two classes, each the
# log-mean-exp of its candidates' logits, so that the number of candidates in a
# class does not move the score (the hackathon app summed four "abnormal"
# softmax labels out of five, so a slice with no signal already scored 0.8).
DEFAULT_ABNORMAL_TEXTS = [
    "an axial abdominal CT slice showing hemoperitoneum",
    "an axial abdominal CT slice showing active contrast extravasation",
    "an axial abdominal CT slice showing a solid organ laceration with hematoma",
]
DEFAULT_NORMAL_TEXTS = [
    "an axial abdominal CT slice with no acute traumatic injury",
    "a normal axial abdominal CT slice",
]


@dataclass
class MedSiglipSettings:
    """MedSigLIP zero-shot triage (backend ``medsiglip``)."""

    # Hub id or local directory (save_pretrained layout).
    model: str = "google/medsiglip-448"
    abnormal_texts: list[str] = field(default_factory=lambda: list(DEFAULT_ABNORMAL_TEXTS))
    normal_texts: list[str] = field(default_factory=lambda: list(DEFAULT_NORMAL_TEXTS))
    # score = sigmoid(scale * (abnormal - normal) + bias), the two class logits
    # each the log-mean-exp of their candidates: Platt scaling. With the
    # defaults 0.5 means "scores the abnormal texts above the normal ones";
    # fit scale and bias on labelled slices to make the score a probability
    # (`trauma-node calibrate-triage LABELS.csv` prints them).
    calibration_scale: float = 1.0
    calibration_bias: float = 0.0
    # Slices scoring at least this go on to reading (at most triage.max_slices,
    # the best ones, in anatomical order).
    threshold: float = 0.5
    batch_size: int = 32


@dataclass
class MedGemmaSettings:
    """MedGemma reading (backend ``medgemma``) and report (backend ``medgemma``)."""

    model: str = "google/medgemma-1.5-4b-it"
    # A PEFT LoRA adapter (e.g. RSNA-trained) by local directory or hub id; "" for none.
    adapter: str = ""
    adapter_in_reading: bool = True
    adapter_in_report: bool = True
    # auto: 4-bit NF4 (bf16 compute) on CUDA, fp32 on the CPU; or 4bit, 8bit, bf16, fp32.
    quantization: str = "auto"
    # Slices sent to the model in one reading. 0: from the GPU memory free once
    # the model is loaded, (free - reserve_gib) / gib_per_slice, between
    # slice_cap_min and slice_cap_max (slice_cap_max on the CPU).
    slice_cap: int = 0
    slice_cap_min: int = 1
    slice_cap_max: int = 16
    # Per slice: 256 image tokens of KV cache (34 layers x 2 x 4 KV heads x 256 x 2 bytes
    # = 139 KB a token, about 36 MB) plus the vision tower's activations at 896 px, which
    # run for all images at once: 0.25 GiB leaves headroom.
    gib_per_slice: float = 0.25
    reserve_gib: float = 1.5
    # 2.5D: each image's red and blue channels are the slices this far above
    # and below (0: the slice alone, grey).
    context_slices: int = 0
    max_new_tokens: int = 512
    report_max_new_tokens: int = 768
    # An invalid JSON reply is repaired when it can be, else asked again once.
    reask: bool = True
    # The reading's prompt profile (pipeline/prompt_profile.py): "multi-slice" (the node's
    # own), "rsna-adapter-v1" (the published RSNA adapter's, one slice per request), a
    # site's own, or "auto": the adapter's prompt_profile.toml when it carries one, else
    # multi-slice. A profile's image, generation and reask values win over those above.
    prompt_profile: str = "auto"
    # A directory of the site's own profiles (NAME.toml each); "" for none.
    prompt_profiles_dir: str = ""


@dataclass
class UnetSettings:
    """U-Net segmentation (backend ``unet``, segmentation-models-pytorch)."""

    # A torch checkpoint (state dict, or {"state_dict": ..., "classes": ...});
    # required: the backend refuses to run with random weights.
    checkpoint: str = ""
    encoder: str = "resnet34"
    # One name per output channel; hemorrhage and active_extravasation become
    # labels, any other name (background, organs) is ignored.
    classes: list[str] = field(default_factory=lambda: ["background", "hemorrhage",
                                                        "active_extravasation"])
    # 2.5D: 2 * context_slices + 1 input channels (adjacent slices).
    context_slices: int = 1
    batch_size: int = 8
    # auto: every slice on CUDA, the triaged slices (and context_slices around
    # them) on the CPU; or all, triaged.
    slices: str = "auto"
    # Tests only: run without a checkpoint (honoured only under pytest).
    allow_random_weights: bool = False


@dataclass
class ModelSettings:
    """The model backends: where the weights are and how they run."""

    # auto (CUDA when available), cuda or cpu.
    device: str = "auto"
    # Soft-tissue window for every image given to a model (centre 50, width 400 HU).
    window_center: float = 50.0
    window_width: float = 400.0
    medsiglip: MedSiglipSettings = field(default_factory=MedSiglipSettings)
    medgemma: MedGemmaSettings = field(default_factory=MedGemmaSettings)
    unet: UnetSettings = field(default_factory=UnetSettings)

    def validate(self) -> list[str]:
        problems: list[str] = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        sig, gem, unet = self.medsiglip, self.medgemma, self.unet
        key = "pipeline.models"
        need(self.device in ("auto", "cuda", "cpu"), f"{key}.device must be auto, cuda or cpu")
        need(self.window_width > 0, f"{key}.window_width must be > 0")
        need(bool(sig.model.strip()), f"{key}.medsiglip.model must name a hub id or a directory")
        need(bool(sig.abnormal_texts) and bool(sig.normal_texts),
             f"{key}.medsiglip: abnormal_texts and normal_texts each need at least one text")
        need(all(t.strip() for t in sig.abnormal_texts + sig.normal_texts),
             f"{key}.medsiglip: candidate texts must not be empty")
        need(0 < sig.threshold < 1, f"{key}.medsiglip.threshold must be in (0, 1)")
        need(sig.calibration_scale > 0, f"{key}.medsiglip.calibration_scale must be > 0")
        need(sig.batch_size >= 1, f"{key}.medsiglip.batch_size must be >= 1")
        need(bool(gem.model.strip()), f"{key}.medgemma.model must name a hub id or a directory")
        need(gem.quantization in QUANTIZATIONS,
             f"{key}.medgemma.quantization must be one of {', '.join(QUANTIZATIONS)}")
        need(gem.slice_cap >= 0, f"{key}.medgemma.slice_cap must be >= 0 (0: from GPU memory)")
        need(1 <= gem.slice_cap_min <= gem.slice_cap_max,
             f"{key}.medgemma: need 1 <= slice_cap_min <= slice_cap_max")
        need(gem.gib_per_slice > 0 and gem.reserve_gib >= 0,
             f"{key}.medgemma: gib_per_slice must be > 0 and reserve_gib >= 0")
        need(0 <= gem.context_slices <= 5, f"{key}.medgemma.context_slices must be in 0..5")
        need(gem.max_new_tokens >= 16 and gem.report_max_new_tokens >= 16,
             f"{key}.medgemma: max_new_tokens and report_max_new_tokens must be >= 16")
        from pipeline.prompt_profile import problems as profile_problems  # the reading's prompt

        problems += profile_problems(self)
        need(bool(unet.encoder.strip()), f"{key}.unet.encoder must be set (e.g. resnet34)")
        need(len(unet.classes) >= 2, f"{key}.unet.classes needs a name per output channel (>= 2)")
        need(bool({"hemorrhage", "active_extravasation"} & set(unet.classes)),
             f"{key}.unet.classes must include hemorrhage or active_extravasation")
        need(0 <= unet.context_slices <= 5, f"{key}.unet.context_slices must be in 0..5")
        need(unet.batch_size >= 1, f"{key}.unet.batch_size must be >= 1")
        need(unet.slices in ("auto", "all", "triaged"), f"{key}.unet.slices must be auto, all or triaged")
        return problems


@dataclass
class PlausibilitySettings:
    """What a series must show before any hemorrhage result leaves the node.

    A series that fails is reported as not assessed, never as a risk tier.
    """

    # Share of the image border inside the body above which there is no body
    # outline (noise, a phantom or a reconstruction that fills the field of view
    # edge to edge); a patient truncated by the field of view touches far less.
    max_border_in_body: float = 0.6
    # ...unless the body holds fat like a patient (then the field of view only cuts it):
    # uniform soft tissue edge to edge is no patient.
    min_fat_share: float = 0.02
    # Blood above this share of the body's volume in the scanned range, or above
    # this many mL (more than an adult's whole blood volume), is not physical.
    max_blood_share_of_body: float = 0.3
    max_blood_ml: float = 5000.0
    # The abdomen must show a liver or a spleen.
    require_liver_or_spleen: bool = True
    # Enhancing liver or spleen parenchyma means contrast: the aorta must then be found.
    require_aorta_when_enhanced: bool = True


@dataclass
class MultiphaseSettings:
    """Contrast foci compared across the phases of one study (pipeline.multiphase)."""

    # The same focus on two phases: centroids this close (mm), or within half its extent.
    match_mm: float = 15.0
    # Grew by this factor (volume or extent) from the earlier to the later phase: active bleeding.
    growth_ratio: float = 1.5
    # Its HU / the aorta's HU changed by at most this between phases: it follows the vessels.
    follows_aorta_tolerance: float = 0.25


@dataclass
class PipelineSettings:
    backends: BackendSettings = field(default_factory=BackendSettings)
    hu: HuSettings = field(default_factory=HuSettings)
    segmentation: SegmentationSettings = field(default_factory=SegmentationSettings)
    triage: TriageSettings = field(default_factory=TriageSettings)
    risk_tiers: RiskTierSettings = field(default_factory=RiskTierSettings)
    models: ModelSettings = field(default_factory=ModelSettings)
    plausibility: PlausibilitySettings = field(default_factory=PlausibilitySettings)
    multiphase: MultiphaseSettings = field(default_factory=MultiphaseSettings)
    # Stable / unstable / unknown; the Q&A request may override it per study.
    hemodynamic_status: HemodynamicStatus = "unknown"
    # Series with fewer slices are refused as not a volume.
    min_slices: int = 10
    # Relative tolerance on slice spacing before a step counts as a gap.
    gap_tolerance: float = 0.5

    def validate(self) -> list[str]:
        """Human-readable problems with cross-field constraints (empty if fine)."""
        problems: list[str] = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        hu, seg, tiers = self.hu, self.segmentation, self.risk_tiers

        for stage, name in vars(self.backends).items():
            known = sorted(ANSWERERS if stage == "answering" else BACKENDS.get(stage, {}))
            need(name in known, f"pipeline.backends.{stage} = {name!r} is not one of {known}")
        need(hu.blood_min < hu.blood_max, "pipeline.hu.blood_max must be > blood_min")
        need(hu.fat_max < hu.blood_low_min <= hu.blood_min, "pipeline.hu: need fat_max < blood_low_min <= blood_min")
        need(hu.blood_max < hu.blush_min, "pipeline.hu.blush_min must be > blood_max")
        need(hu.blush_min < hu.blush_max and hu.blush_min < hu.bone_min,
             "pipeline.hu: need blush_min < blush_max and blush_min < bone_min")
        need(hu.fat_min < hu.fat_max < hu.blood_min, "pipeline.hu: need fat_min < fat_max < blood_min")
        need(hu.parenchyma_min < hu.parenchyma_max, "pipeline.hu.parenchyma_max must be > parenchyma_min")
        need(seg.working_pixel_mm > 0 and seg.working_slice_mm > 0,
             "pipeline.segmentation.working_pixel_mm and working_slice_mm must be > 0")
        need(seg.min_intraparenchymal_ml >= 0, "pipeline.segmentation.min_intraparenchymal_ml must be >= 0")
        need(tiers.min_space_ml >= 0, "pipeline.risk_tiers.min_space_ml must be >= 0")
        plausible = self.plausibility
        need(0 < plausible.max_border_in_body <= 1, "pipeline.plausibility.max_border_in_body must be in (0, 1]")
        need(0 < plausible.max_blood_share_of_body <= 1,
             "pipeline.plausibility.max_blood_share_of_body must be in (0, 1]")
        need(plausible.max_blood_ml > 0, "pipeline.plausibility.max_blood_ml must be > 0")
        need(self.multiphase.match_mm > 0 and self.multiphase.growth_ratio > 1
             and self.multiphase.follows_aorta_tolerance > 0,
             "pipeline.multiphase: need match_mm > 0, growth_ratio > 1, follows_aorta_tolerance > 0")
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
        problems += self.models.validate()
        return problems
