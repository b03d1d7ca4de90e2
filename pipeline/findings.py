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

SCHEMA_VERSION = "1.0"
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
    region: str  # perihepatic, perisplenic, perirenal_right, ..., pelvic, other
    organs_touched: list[str]  # organs within the contact distance
    inside_organ: str | None  # enclosed by that organ's parenchyma (hematoma or contained blush)
    max_extent_mm: float  # largest bounding-box side: a diameter estimate
    slices: list[int]  # first and last slice index
    centroid_mm: list[float]  # patient coordinates (LPS)


@dataclass
class OrganFinding:
    organ: str
    located: bool  # found by the backend's anatomy step
    adjacent_blood_ml: float
    intraparenchymal_blood_ml: float
    largest_intraparenchymal_mm: float
    blush_inside: bool
    blush_outside_adjacent: bool
    aast_grade: int | None  # lower bound supported by the image evidence, or None
    aast_scale: str | None
    aast_rules: list[str]
    note: str


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


@dataclass
class Provenance:
    pipeline_version: str
    backend_summary: str
    stages: list[StageProvenance]
    settings: dict[str, Any]
    notes: list[str]


@dataclass
class Findings:
    research_use: str
    series: dict[str, Any]  # geometry and the source slices, in volume order
    triage: TriageResult
    volumes_ml: dict[str, float]  # hemorrhage (all blood, blush included), active_extravasation
    volumes_by_region_ml: dict[str, float]
    components: list[BloodComponent]
    organs: dict[str, OrganFinding]
    reading: dict[str, Any]
    risk_tier: str  # none | low | moderate | high
    risk_tier_reasons: list[str]
    recommendation: Recommendation
    report: str
    provenance: Provenance
    schema_version: str = SCHEMA_VERSION
    labels: np.ndarray | None = field(default=None, repr=False)  # uint8, volume shape
    labels_file: str | None = None  # where the caller saved the labels, if it did
    # Reading vs segmentation (pipeline.reconcile): both kept, disagreements stated.
    reconciliation: dict[str, Any] = field(default_factory=dict)

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
        return cls(
            research_use=data["research_use"], series=data["series"],
            triage=TriageResult(**data["triage"]), volumes_ml=data["volumes_ml"],
            volumes_by_region_ml=data["volumes_by_region_ml"],
            components=[BloodComponent(**c) for c in data["components"]],
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
