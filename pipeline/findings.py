"""Findings: the one record that flows from the pipeline to the outputs.

A plain, typed, JSON-serialisable record. ``to_json_dict()`` gives the stable
findings.json interface documented in pipeline/README.md; the label volume is
kept out of the JSON (it is an array of the series' size) and described by
``label_volume`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from pipeline.labels import LABEL_NAMES

# 1.1: compartments, non-overlapping labels, organ injury on parenchymal evidence, assessment
SCHEMA_VERSION = "1.1"
RESEARCH_USE = ("RESEARCH USE ONLY. Not for diagnosis or treatment decisions; every finding "
                "must be confirmed by a radiologist.")


@dataclass
class TriageResult:
    scores: list[float]  # one per slice, in volume order (cranial first)
    chosen: list[int]  # slice indices handed to the reading stage, in anatomical order
    threshold: float
    method: str


@dataclass
class BloodComponent:
    """One connected collection of blood (with any blush inside it)."""

    id: int
    volume_ml: float
    active_extravasation_ml: float
    region: str  # the compartment holding most of it (pipeline.compartments.NAMES)
    organs_touched: list[str]  # organs within the contact distance: adjacency, not injury
    inside_organ: str | None  # mostly within that organ's parenchyma (hematoma or contained blush)
    max_extent_mm: float  # largest bounding-box side: a diameter estimate
    slices: list[int]  # first and last slice index
    centroid_mm: list[float]  # patient coordinates (LPS)
    compartments: dict[str, float] = field(default_factory=dict)  # its mL in each compartment
    # Why its edge is uncertain, e.g. "abuts the abdominal wall without a fat
    # plane" (tissue of blood's HU against it); empty when the edge was seen.
    boundary_uncertain: list[str] = field(default_factory=list)


@dataclass
class ContrastFocus:
    """One connected focus of contrast-density material in blood (a blush).

    On one phase a blush may be active bleeding or a contained vascular injury
    (pseudoaneurysm): kind stays "undetermined" unless another phase of the
    study was compared (pipeline.multiphase), and evidence says what was seen.
    """

    id: int
    volume_ml: float
    mean_hu: float
    aorta_hu: float | None  # the same series' aorta: the reference it enhances against
    centroid_mm: list[float]  # patient coordinates (LPS)
    max_extent_mm: float
    compartment: str  # where it lies (pipeline.compartments.NAMES)
    kind: str = "undetermined"  # undetermined | active_bleeding | contained_vascular_injury
    evidence: str = ""
    voxel: list[int] | None = None  # [slice, row, column] of the focus nearest its centre


@dataclass
class ContrastPhase:
    """The contrast phase the images show (pipeline.phase), whatever the series description says."""

    name: str = "undetermined"  # unenhanced | arterial | portal_venous | delayed | undetermined
    evidence: list[str] = field(default_factory=list)  # what decided it, in words
    measured: dict[str, Any] = field(default_factory=dict)  # HU of the aorta, portal vein, organs...


@dataclass
class Compartment:
    """The blood in one compartment; every voxel of blood is in exactly one."""

    name: str  # pipeline.compartments.NAMES: intrasplenic, perisplenic, hepatorenal, pelvic, ...
    volume_ml: float
    active_extravasation_ml: float
    parenchymal: bool  # inside an organ: evidence of that organ's injury
    organ: str | None  # the organ it is named after (its parenchyma, or the space beside it)
    organs_adjacent: list[str]  # organs its blood touches (within organ_contact_mm)
    largest_extent_mm: float  # of its largest connected piece
    contained_vascular_injury_ml: float = 0.0  # foci found contained across phases (pipeline.multiphase)
    voxel: list[int] | None = None  # [slice, row, column] of its blood near its centre: where viewers point


@dataclass
class OrganFinding:
    organ: str
    located: bool  # found by the backend's anatomy step
    adjacent_blood_ml: float  # in the compartments named after it (perisplenic, ...): each mL once
    intraparenchymal_blood_ml: float
    largest_intraparenchymal_mm: float
    blush_inside: bool
    blush_outside_adjacent: bool
    aast_grade: int | None  # lower bound supported by the image evidence, or None
    aast_scale: str | None
    aast_rules: list[str]
    note: str
    # Parenchymal evidence only (blood inside it, a contained blush): blood beside
    # an organ never makes it injured. injury_evidence says what was seen.
    injured: bool = False
    injury_evidence: list[str] = field(default_factory=list)
    adjacent_compartments: list[str] = field(default_factory=list)  # where blood touches it


@dataclass
class Assessment:
    """Whether the series could be assessed at all (pipeline.plausibility)."""

    assessed: bool
    reasons: list[str]  # why not, for people; empty when assessed
    measured: dict[str, Any] = field(default_factory=dict)  # what the checks measured
    notes: list[str] = field(default_factory=list)  # limits that did not stop the assessment


@dataclass
class RuleFiring:
    id: str
    statement: str
    source: str
    branch: str | None = None  # set when it fired only for a hypothetical hemodynamic status


@dataclass
class Recommendation:
    hemodynamic_status: str  # stable | unstable | unknown
    summary: str
    actions: list[str]
    branches: dict[str, str]  # what each hemodynamic status would mean, when unknown
    rules_fired: list[RuleFiring]


@dataclass
class StageProvenance:
    stage: str
    backend: str
    version: str
    description: str
    seconds: float
    weights: str = ""  # the model weights it used (pipeline.models.fingerprint); '' for none


@dataclass
class Provenance:
    pipeline_version: str
    backend_summary: str
    stages: list[StageProvenance]
    settings: dict[str, Any]
    notes: list[str]


def incomplete_statement(reason: str) -> str:
    """What every output says of a series that may lack instances (Findings.incomplete)."""
    return (f"Preliminary: this series may be incomplete ({reason}). Missing slices can hide "
            "blood or an injury, so volumes are lower bounds; a later complete version of the "
            "series replaces this result.")


@dataclass
class Findings:
    research_use: str
    series: dict[str, Any]  # geometry and the source slices, in volume order
    triage: TriageResult
    # hemorrhage (all blood), non_enhancing_hemorrhage + active_extravasation (= hemorrhage)
    volumes_ml: dict[str, float]
    volumes_by_region_ml: dict[str, float]  # per compartment: adds up to the hemorrhage
    components: list[BloodComponent]
    organs: dict[str, OrganFinding]
    reading: dict[str, Any]
    risk_tier: str  # none | low | moderate | high, or not_assessed (see assessment)
    risk_tier_reasons: list[str]
    recommendation: Recommendation
    report: str
    provenance: Provenance
    schema_version: str = SCHEMA_VERSION
    labels: np.ndarray | None = field(default=None, repr=False)  # uint8, volume shape
    labels_file: str | None = None  # where the caller saved the labels, if it did
    # Reading vs segmentation (pipeline.reconcile): both kept, disagreements stated.
    reconciliation: dict[str, Any] = field(default_factory=dict)
    compartments: list[Compartment] = field(default_factory=list)
    assessment: Assessment = field(default_factory=lambda: Assessment(True, []))
    contrast_foci: list[ContrastFocus] = field(default_factory=list)
    # Across the study's phases (pipeline.multiphase): compared or not, and why.
    multiphase: dict[str, Any] = field(default_factory=dict)
    phase: ContrastPhase = field(default_factory=ContrastPhase)  # older findings.json: undetermined
    # Why the series may lack instances (the node cut short receiving it); None: not known to.
    incomplete: str | None = None
    # RSNA 2023 targets as probabilities (pipeline.probabilities); uncalibrated, for evaluation.
    probabilities: dict[str, Any] = field(default_factory=dict)
    # Against the patient's prior study (pipeline.interval): compared or not, and why.
    interval: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        out = {f.name: _plain(getattr(self, f.name))
               for f in fields(self) if f.name not in ("labels", "labels_file")}
        out["label_volume"] = {
            "file": self.labels_file,
            "format": "numpy .npy, uint8, shape (slices, rows, columns) in series.slices order",
            "shape": list(self.series["shape"]),  # the labels match the volume
            "values": {str(k): v for k, v in LABEL_NAMES.items()},
        }
        return out

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> "Findings":
        """The record back from findings.json (without the label volume)."""
        provenance = dict(data["provenance"])
        provenance["stages"] = [StageProvenance(**s) for s in provenance["stages"]]
        recommendation = dict(data["recommendation"])
        recommendation["rules_fired"] = [RuleFiring(**r) for r in recommendation["rules_fired"]]
        volumes = dict(data["volumes_ml"])
        volumes.setdefault("non_enhancing_hemorrhage", round(
            volumes.get("hemorrhage", 0.0) - volumes.get("active_extravasation", 0.0), 3))
        return cls(
            research_use=data["research_use"], series=data["series"],
            triage=TriageResult(**data["triage"]), volumes_ml=volumes,
            volumes_by_region_ml=data["volumes_by_region_ml"],
            components=[BloodComponent(**c) for c in data["components"]],
            compartments=[Compartment(**c) for c in data.get("compartments", [])],
            assessment=Assessment(**data.get("assessment", {"assessed": True, "reasons": []})),
            contrast_foci=[ContrastFocus(**c) for c in data.get("contrast_foci", [])],
            multiphase=data.get("multiphase", {}), phase=ContrastPhase(**data.get("phase", {})),
            incomplete=data.get("incomplete"), probabilities=data.get("probabilities", {}),
            interval=data.get("interval", {}),
            organs={k: OrganFinding(**v) for k, v in data["organs"].items()},
            reading=data["reading"], risk_tier=data["risk_tier"],
            risk_tier_reasons=data["risk_tier_reasons"],
            recommendation=Recommendation(**recommendation), report=data["report"],
            provenance=Provenance(**provenance), schema_version=data["schema_version"],
            labels_file=data.get("label_volume", {}).get("file"),
            reconciliation=data.get("reconciliation", {}))


def _plain(value: Any) -> Any:
    """Dataclasses and numpy scalars to JSON-ready Python values."""
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
