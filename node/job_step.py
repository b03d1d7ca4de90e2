"""What a worker does with one series version: the pipeline, Findings as a dict.

The returned dict is findings.json (pipeline/README.md): JSON-ready, the
label volume left out. A bad series raises pipeline.VolumeError, whose
message names the problem (gap, duplicate positions, mixed orientations or
sizes, missing pixel data); the worker marks the job failed with it.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import PipelineSettings, run_series


def run_job_step(paths: list[Path], settings: PipelineSettings | None = None) -> dict:
    findings = run_series(paths, settings)
    return findings.to_json_dict()
