"""One CT series in, Findings out: the trauma CT analysis pipeline (research use only).

    from pipeline import run_series, PipelineSettings
    findings = run_series(paths, PipelineSettings())
"""

from pipeline.findings import Findings
from pipeline.run import run_series, run_volume
from pipeline.settings import PipelineSettings
from pipeline.volume import Volume, VolumeError, load_volume

__all__ = ["Findings", "PipelineSettings", "Volume", "VolumeError", "load_volume",
           "run_series", "run_volume"]
