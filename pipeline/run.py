"""The pipeline's one entry point: a CT series in, Findings out.

Pure: no networking, no database. ``progress`` receives one human-readable
line per stage; ``observer`` (for benchmarks) is told when each stage starts
and ends.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pydicom

from pipeline import multiphase, registry, rules
from pipeline.anatomy import Anatomy, build_anatomy
from pipeline.contrast_foci import FocusMap
from pipeline.findings import (RESEARCH_USE, Assessment, Findings, OrganFinding, Provenance,
                               Recommendation, RuleFiring, StageProvenance)
from pipeline.grading import NOT_ASSESSED, ORGANS, Grading
from pipeline.labels import CONTAINED_VASCULAR_INJURY
from pipeline.models.fingerprint import stage_weights
from pipeline.plausibility import assess
from pipeline.probabilities import probabilities
from pipeline.quantification import Quantification
from pipeline.reconcile import reconcile
from pipeline.settings import PipelineSettings
from pipeline.stages import StageContext
from pipeline.volume import Volume, load_volume

PIPELINE_VERSION = "0.1.0"
EMBEDDED = "embedded CPU baseline, no model weights"

Progress = Callable[[str], None]
Observer = Callable[[str, str], None]  # (stage, "start" | "end")
VolumeLoader = Callable[[Sequence[Path | str], int, float], Volume]  # (paths, min_slices, gap_tolerance)


@dataclass(frozen=True)
class _Step:
    """Provenance of a fixed step that has no choice of backend."""

    name: str
    version: str
    description: str


LOADER = _Step("pydicom", pydicom.__version__, "volume loading, geometry and HU")
ANATOMY = _Step("hu-anatomy", "1.0", "body, peritoneal cavity and organ regions from HU")


class _Stages:
    """Times each stage and records which backend ran it."""

    def __init__(self, progress: Progress, observer: Observer | None) -> None:
        self.progress, self.observer = progress, observer
        self.records: list[StageProvenance] = []

    @contextmanager
    def stage(self, stage: str, backend: Any) -> Iterator[None]:
        name = backend.name
        self.progress(f"{stage}: {name} ...")
        if self.observer:
            self.observer(stage, "start")
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        if self.observer:
            self.observer(stage, "end")
        self.records.append(StageProvenance(stage, name, backend.version, backend.description,
                                            round(seconds, 3)))
        self.progress(f"{stage}: done in {seconds:.2f} s")


def _checked(settings: PipelineSettings | None) -> PipelineSettings:
    settings = settings or PipelineSettings()
    problems = settings.validate()
    if problems:
        raise ValueError("invalid pipeline settings: " + "; ".join(problems))
    return settings


def run_series(paths: Sequence[Path | str], settings: PipelineSettings | None = None,
               hemodynamic_status: str | None = None, progress: Progress = lambda _: None,
               observer: Observer | None = None, other_phases: Sequence[Findings] = (),
               incomplete: str | None = None, load: VolumeLoader = load_volume) -> Findings:
    """Load the files of one CT series and run every stage (raises VolumeError on bad input).

    other_phases: the Findings of the study's other series already analysed; their
    contrast foci are compared with this series' (pipeline.multiphase).
    incomplete: why the series may lack instances, when the caller knows it may; the
    report and every output say so.
    load: how the volume is read (the node's worker: from what it decoded while the
    series arrived); the same volume as load_volume's.
    """
    settings = _checked(settings)
    stages = _Stages(progress, observer)
    with stages.stage("volume", LOADER):
        volume = load(paths, settings.min_slices, settings.gap_tolerance)
    progress(f"volume: {volume.hu.shape[0]} slices of {volume.hu.shape[1]}x{volume.hu.shape[2]}, "
             f"spacing {volume.spacing[0]:.2f} x {volume.spacing[1]:.3f} x {volume.spacing[2]:.3f} mm")
    return run_volume(volume, settings, hemodynamic_status, progress, observer, stages, other_phases,
                      incomplete)


def run_volume(volume: Volume, settings: PipelineSettings | None = None,
               hemodynamic_status: str | None = None, progress: Progress = lambda _: None,
               observer: Observer | None = None, stages: _Stages | None = None,
               other_phases: Sequence[Findings] = (), incomplete: str | None = None) -> Findings:
    """Run every stage on a loaded volume."""
    settings = _checked(settings)
    stages = stages or _Stages(progress, observer)
    status = hemodynamic_status or settings.hemodynamic_status
    if status not in ("stable", "unstable", "unknown"):
        raise ValueError(f"hemodynamic status must be stable, unstable or unknown, not {status!r}")
    chosen = {stage: registry.create(stage, settings) for stage in registry.BACKENDS}
    with stages.stage("anatomy", ANATOMY):
        anatomy = build_anatomy(volume, settings)
    context = StageContext(volume, settings, anatomy, status, list(anatomy.notes))
    with stages.stage("triage", chosen["triage"]):
        triage = chosen["triage"].run(context)
    context.triage = triage
    with stages.stage("segmentation", chosen["segmentation"]):
        labels = chosen["segmentation"].run(context)
    with stages.stage("quantification", chosen["quantification"]):
        quantification = chosen["quantification"].run(context, labels)
    progress(f"quantification: hemorrhage {quantification.volumes_ml['hemorrhage']:.1f} mL, "
             f"active extravasation {quantification.volumes_ml['active_extravasation']:.1f} mL")
    assessment = assess(volume, anatomy, quantification, settings)
    context.notes.extend(assessment.notes)
    multiphase: dict[str, Any] = {}
    if assessment.assessed:
        multiphase, quantification = _contrast_foci(context, labels, quantification, chosen, other_phases)
        with stages.stage("reading", chosen["reading"]):
            reading = chosen["reading"].run(context, triage, quantification)
        with stages.stage("grading", chosen["grading"]):
            grading = chosen["grading"].run(context, quantification)
    else:
        progress("not assessed: " + "; ".join(assessment.reasons))
        context.notes.extend(f"not assessed: {reason}" for reason in assessment.reasons)
        quantification, labels = _nothing_measured(quantification), None
        reading, grading = _not_assessed_reading(assessment), _not_assessed_grading(anatomy, status, assessment)
    del context.anatomy, anatomy  # the working grid is not needed any more
    reconciliation = reconcile(reading, quantification.volumes_ml, grading.organs, grading.risk_tier)
    context.notes.extend(f"reading vs segmentation: {d}" for d in reconciliation["disagreements"])

    series = volume.geometry_dict()
    series["slices"] = [{"sop_instance_uid": s.sop_instance_uid, "frame": s.frame,
                         "position": list(s.position)} for s in volume.slices]
    findings = Findings(
        research_use=RESEARCH_USE, series=series, triage=triage,
        volumes_ml=_rounded_volumes(quantification.volumes_ml),
        volumes_by_region_ml={k: round(float(v), 3) for k, v in quantification.by_region_ml.items()},
        components=quantification.components, organs=grading.organs, reading=reading,
        risk_tier=grading.risk_tier, risk_tier_reasons=grading.risk_tier_reasons,
        recommendation=grading.recommendation, report="",
        provenance=Provenance(PIPELINE_VERSION, _backend_summary(chosen), _with_weights(stages.records, settings),
                              asdict(settings), context.notes),
        labels=labels, reconciliation=reconciliation, compartments=quantification.compartments,
        assessment=assessment, contrast_foci=quantification.contrast_foci, multiphase=multiphase,
        phase=context.phase, incomplete=incomplete,  # phase: recognised in the anatomy step
        probabilities=probabilities(grading.organs, quantification.volumes_ml,
                                    quantification.by_region_ml, reading, assessment.assessed))
    with stages.stage("report", chosen["report"]):
        findings.report = chosen["report"].run(findings)
    return findings


def _contrast_foci(context: StageContext, labels: np.ndarray, quantification: Quantification,
                   chosen: dict[str, Any], other_phases: Sequence[Findings]
                   ) -> tuple[dict[str, Any], Quantification]:
    """The blushes, told apart across the study's phases when there are others; a focus found
    contained is relabelled, and the volumes counted again. The foci go with the quantification,
    which the grading reads (a grade follows the kind)."""
    anatomy, where = context.anatomy, quantification.compartment_map
    found = FocusMap(labels)
    foci = found.describe(context.volume, anatomy.aorta_hu, lambda k, i, j: where.name_at(anatomy, k, i, j))
    current = multiphase.Series(multiphase.phase_of(context), foci, context.volume.geometry_dict()
                                | {"series_instance_uid": context.volume.series_instance_uid,
                                   "frame_of_reference_uid": context.volume.frame_of_reference_uid})
    kinds, summary = multiphase.compare(current, other_phases, context.settings.multiphase)
    for focus in foci:
        focus.kind, focus.evidence = kinds.get(focus.id, (focus.kind, focus.evidence))
    contained = [f.id for f in foci if f.kind == multiphase.CONTAINED]
    for focus_id in contained:
        found.relabel(focus_id, CONTAINED_VASCULAR_INJURY)
    if contained:
        quantification = chosen["quantification"].run(context, labels)
    quantification.contrast_foci = foci
    return summary, quantification


def _nothing_measured(quantification: Quantification) -> Quantification:
    """No hemorrhage result for a series that could not be assessed: not even a zero that
    would read as 'none' (the Findings' assessment says why; measured keeps the candidate)."""
    return Quantification({name: 0.0 for name in quantification.volumes_ml}, {}, quantification.voxel_volume_mm3,
                          {}, [], [])


def _not_assessed_reading(assessment: Assessment) -> dict[str, Any]:
    reasons = "; ".join(assessment.reasons)
    return {"injury_pattern": f"not assessed: {reasons}",
            "organs_involved": [], "bleeding_description": f"Not assessed: {reasons}.",
            "severity_estimate": "not assessed", "differential_diagnosis": [],
            "slices_considered": []}


def _not_assessed_grading(anatomy: Anatomy, status: str, assessment: Assessment) -> Grading:
    note = "not assessed: the series could not be assessed (see the assessment)"
    organs = {organ: OrganFinding(organ=organ, located=anatomy.organ_found(organ), adjacent_blood_ml=0.0,
                                  intraparenchymal_blood_ml=0.0, largest_intraparenchymal_mm=0.0,
                                  blush_inside=False, blush_outside_adjacent=False, aast_grade=None,
                                  aast_scale=None, aast_rules=[], note=note)
              for organ in ORGANS}
    firing = RuleFiring(rules.NOT_ASSESSED_ID, rules.NOT_ASSESSED_STATEMENT, rules.NOT_ASSESSED_SOURCE)
    recommendation = Recommendation(status, rules.NOT_ASSESSED_STATEMENT, [rules.NOT_ASSESSED_STATEMENT],
                                    {}, [firing])
    return Grading(organs, NOT_ASSESSED, list(assessment.reasons), recommendation)


def _with_weights(records: list[StageProvenance], settings: PipelineSettings) -> list[StageProvenance]:
    for record in records:
        record.weights = stage_weights(record.stage, record.backend, settings)
    return records


def _rounded_volumes(volumes: dict[str, float]) -> dict[str, float]:
    """To the microlitre, the two labels' volumes adding up exactly to the stated total."""
    out = {k: round(float(v), 3) for k, v in volumes.items()}
    if "non_enhancing_hemorrhage" in out:
        out["non_enhancing_hemorrhage"] = round(out["hemorrhage"] - out["active_extravasation"]
                                                - out.get("contained_vascular_injury", 0.0), 3)
    return out


def _backend_summary(chosen: dict[str, Any]) -> str:
    """Names every backend; says 'embedded CPU baseline' when the model stages all are."""
    names = ", ".join(f"{stage}={b.name}" for stage, b in chosen.items())
    model_stages = ("triage", "segmentation", "reading", "report")
    embedded = all(EMBEDDED in chosen[stage].description for stage in model_stages)
    return f"{EMBEDDED} ({names})" if embedded else names
