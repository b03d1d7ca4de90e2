"""What a worker does with one series version.

The pipeline turns the series into Findings; the DICOM objects are built and
written with findings.json beside them (node.results); one outbox row per
object and destination queues them for delivery. The returned dict is
findings.json plus where its outputs went; it is stored as the job's result.
A bad series raises pipeline.VolumeError, whose message names the problem;
the worker marks the job failed with it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline import run_series
from pipeline.findings import Findings

from .config import Settings
from .index import Index
from .jobs import ClaimedJob, other_phases
from .results import queue_delivery, results_dir, write_outputs

log = logging.getLogger("trauma_node.worker")


def run_job(settings: Settings, index: Index, job: ClaimedJob, paths: list[Path]) -> dict:
    others = [Findings.from_json_dict(result) for result in other_phases(index, job)]
    findings = run_series(paths, settings.pipeline, other_phases=others)
    out_dir = results_dir(settings, job.study_uid, job.series_uid, job.series_version)
    objects = write_outputs(findings, paths, out_dir, job.series_version)
    queued = queue_delivery(settings, index, job.study_uid, job.series_uid, job.series_version,
                            objects)
    log.info("job %d: %s risk, %.1f mL blood; %s written, %d deliveries queued", job.id,
             findings.risk_tier, findings.volumes_ml.get("hemorrhage", 0.0),
             "+".join(sorted(objects)) or "no objects", queued)
    result = findings.to_json_dict()
    result["outputs"] = {"directory": str(out_dir),
                         "objects": {kind: [path.name for path in paths]
                                     for kind, paths in objects.items()}}
    return result
