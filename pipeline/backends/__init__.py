"""The registry of backends: stage -> backend name -> class built from the settings."""

from __future__ import annotations

from typing import Any

from pipeline.backends.hu_segmentation import HuSegmentation
from pipeline.backends.hu_triage import HuTriage
from pipeline.backends.rules_reading import RulesReading
from pipeline.backends.template_report import TemplateReport
from pipeline.grading import RuleTableGrading
from pipeline.quantification import VoxelQuantification
from pipeline.settings import PipelineSettings

BACKENDS: dict[str, dict[str, type]] = {
    "triage": {HuTriage.name: HuTriage},
    "segmentation": {HuSegmentation.name: HuSegmentation},
    "quantification": {VoxelQuantification.name: VoxelQuantification},
    "reading": {RulesReading.name: RulesReading},
    "grading": {RuleTableGrading.name: RuleTableGrading},
    "report": {TemplateReport.name: TemplateReport},
}


def create(stage: str, settings: PipelineSettings) -> Any:
    """The backend chosen for a stage in settings.backends."""
    name = getattr(settings.backends, stage)
    try:
        return BACKENDS[stage][name](settings)
    except KeyError:
        raise ValueError(f"unknown {stage} backend {name!r}; known: {sorted(BACKENDS[stage])}") from None
