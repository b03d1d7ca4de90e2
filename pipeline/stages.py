"""The stage interface: what each backend receives and returns.

A backend is a class with ``name``, ``version``, ``description`` and a
``run`` method; it is built from the settings. The registry of backends lives
in pipeline.registry (BACKENDS), keyed by stage and then by backend name, which
is what ``[pipeline.backends]`` in the node's config chooses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipeline.settings import PipelineSettings

if TYPE_CHECKING:
    from pipeline.anatomy import Anatomy
    from pipeline.findings import ContrastPhase, Findings, TriageResult
    from pipeline.grading import Grading
    from pipeline.quantification import Quantification
    from pipeline.volume import Volume


@dataclass
class StageContext:
    """What every stage may read; notes collect caveats for the provenance."""

    volume: "Volume"
    settings: PipelineSettings
    anatomy: "Anatomy"
    hemodynamic_status: str
    notes: list[str] = field(default_factory=list)
    # Set once the triage stage has run (the U-Net backend segments the triaged slices on the CPU).
    triage: "TriageResult | None" = None
    # The contrast phase the images show (pipeline.phase); from the anatomy step unless given.
    phase: "ContrastPhase | None" = None

    def __post_init__(self) -> None:
        if self.phase is None:
            self.phase = getattr(self.anatomy, "phase", None)


class Backend(Protocol):
    name: str
    version: str
    description: str


class TriageBackend(Backend, Protocol):
    def run(self, context: StageContext) -> "TriageResult": ...


class SegmentationBackend(Backend, Protocol):
    def run(self, context: StageContext) -> np.ndarray: ...  # uint8 labels (pipeline.labels)


class QuantificationBackend(Backend, Protocol):
    def run(self, context: StageContext, labels: np.ndarray) -> "Quantification": ...


class ReadingBackend(Backend, Protocol):
    def run(self, context: StageContext, triage: "TriageResult",
            quantification: "Quantification") -> dict[str, Any]: ...


class GradingBackend(Backend, Protocol):
    def run(self, context: StageContext, quantification: "Quantification") -> "Grading": ...


class ReportBackend(Backend, Protocol):
    def run(self, findings: "Findings") -> str: ...
