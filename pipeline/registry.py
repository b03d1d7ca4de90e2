"""The one registry of backends: stage -> backend name -> the class built from the settings,
and the Q&A answerers by name.

Classes are named here as "module:Class" and imported when one is built, so this module
imports nothing of the pipeline: pipeline.settings (which checks the names) and
pipeline.run import it, and no backend or model module imports it back. The model
backends (medsiglip, unet, medgemma) import torch only when they run.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

BACKENDS: dict[str, dict[str, str]] = {
    "triage": {"hu-baseline": "pipeline.backends.hu_triage:HuTriage",
               "medsiglip": "pipeline.backends.medsiglip_triage:MedSiglipTriage"},
    "segmentation": {"hu-baseline": "pipeline.backends.hu_segmentation:HuSegmentation",
                     "unet": "pipeline.backends.unet_segmentation:UnetSegmentation"},
    "quantification": {"voxel-count": "pipeline.quantification:VoxelQuantification"},
    "reading": {"rules-baseline": "pipeline.backends.rules_reading:RulesReading",
                "medgemma": "pipeline.backends.medgemma_reading:MedGemmaReading"},
    "grading": {"rule-table": "pipeline.grading:RuleTableGrading"},
    "report": {"template": "pipeline.backends.template_report:TemplateReport",
               "medgemma": "pipeline.backends.medgemma_report:MedGemmaReport"},
}

DEFAULT_ANSWERER = "grounded"
# The Q&A answerers: name -> "module:Class", or a factory(pipeline_settings) (register).
ANSWERERS: dict[str, str | Callable[[Any], Any]] = {
    "grounded": "pipeline.answering:GroundedAnswerer",
    "medgemma": "pipeline.backends.medgemma_answering:MedGemmaAnswerer",
}


def load(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """The class (or factory) a registry entry names."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def create(stage: str, settings: Any) -> Any:
    """The backend chosen for a stage in settings.backends."""
    name = getattr(settings.backends, stage)
    try:
        ref = BACKENDS[stage][name]
    except KeyError:
        raise ValueError(f"unknown {stage} backend {name!r}; known: {sorted(BACKENDS[stage])}") from None
    return load(ref)(settings)


def register(name: str, factory: Callable[[Any], Any]) -> None:
    """Make an answerer available by name; factory(pipeline_settings) builds it."""
    ANSWERERS[name] = factory


def answerer_name(settings: Any = None) -> str:
    backends = getattr(settings, "backends", None)
    return getattr(backends, "answering", None) or DEFAULT_ANSWERER


def create_answerer(settings: Any = None, name: str | None = None) -> Any:
    """The answerer (pipeline.answering.Answerer) chosen in the pipeline settings (or by name)."""
    name = name or answerer_name(settings)
    try:
        factory = ANSWERERS[name]
    except KeyError:
        raise ValueError(f"unknown answering backend {name!r}; known: {sorted(ANSWERERS)}") from None
    return load(factory)(settings)
