"""The registry of backends: stage -> backend name -> class built from the settings."""

from __future__ import annotations

from typing import Any

from pipeline.backends.hu_segmentation import HuSegmentation
from pipeline.backends import medgemma_answering  # noqa: F401 - registers the "medgemma" answerer
from pipeline.backends.hu_triage import HuTriage
from pipeline.backends.medgemma_reading import MedGemmaReading
from pipeline.backends.medgemma_report import MedGemmaReport
from pipeline.backends.medsiglip_triage import MedSiglipTriage
from pipeline.backends.rules_reading import RulesReading
from pipeline.backends.template_report import TemplateReport
from pipeline.backends.unet_segmentation import UnetSegmentation
from pipeline.grading import RuleTableGrading
from pipeline.quantification import VoxelQuantification
from pipeline.settings import PipelineSettings

# The model backends (medsiglip, unet, medgemma) import torch only when they run.
BACKENDS: dict[str, dict[str, type]] = {
    "triage": {HuTriage.name: HuTriage, MedSiglipTriage.name: MedSiglipTriage},
    "segmentation": {HuSegmentation.name: HuSegmentation, UnetSegmentation.name: UnetSegmentation},
    "quantification": {VoxelQuantification.name: VoxelQuantification},
    "reading": {RulesReading.name: RulesReading, MedGemmaReading.name: MedGemmaReading},
    "grading": {RuleTableGrading.name: RuleTableGrading},
    "report": {TemplateReport.name: TemplateReport, MedGemmaReport.name: MedGemmaReport},
}


def create(stage: str, settings: PipelineSettings) -> Any:
    """The backend chosen for a stage in settings.backends."""
    name = getattr(settings.backends, stage)
    try:
        return BACKENDS[stage][name](settings)
    except KeyError:
        raise ValueError(f"unknown {stage} backend {name!r}; known: {sorted(BACKENDS[stage])}") from None
