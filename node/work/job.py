"""What a worker does with one series version.

The pipeline turns the series into Findings; the DICOM objects are built and
written with findings.json beside them (node.work.results); one outbox row per
object and destination queues them for delivery, the SEG and SR as soon as they are
written, before the objects for other viewers are built. The returned dict is
findings.json plus where its outputs went; it is stored as the job's result.
Results that would take the disk below its floor are not written
(node.work.results.NoRoomForResults; the worker puts the job back). The results of a
series version that may be incomplete (node.store.receiving) say so, and are held for
completion.incomplete_hold_s: a later version of the series withdraws them.
A bad series raises pipeline.VolumeError, whose message names the problem;
the worker marks the job failed with it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline import run_series
from pipeline.findings import Findings
from pipeline.interval import attach

from node.prior.comparison import interval_change
from node.store import outbox
from node.config import Settings
from node.store.database import Index
from node.store.jobs import ClaimedJob, earlier_incomplete_versions, latest_version, other_phases
from node.work.prefetch import Taken
from node.work.source_series import SourceSeries
from node.work.results import check_room, queue_delivery, results_bytes, results_dir, write_outputs

log = logging.getLogger("trauma_node.worker")


def run_job(settings: Settings, index: Index, job: ClaimedJob, paths: list[Path],
            ahead: Taken | None = None) -> dict:
    """ahead: what the worker decoded of the series while it arrived (node.work.prefetch)."""
    others = [Findings.from_json_dict(result) for result in other_phases(index, job)]
    source = SourceSeries(ahead)
    findings = run_series(paths, settings.pipeline, other_phases=others,
                          incomplete=job.incomplete_reason, load=source.load)
    change = interval_change(settings, index, job.study_uid, findings)
    if change is not None:
        attach(findings, change)
    check_room(settings, results_bytes(findings.series["shape"]))
    out_dir = results_dir(settings, job.study_uid, job.series_uid, job.series_version)
    withdrawn = _withdraw_earlier(index, job)
    deliveries = _Deliveries(settings, index, job)
    objects = write_outputs(findings, paths, out_dir, job.series_version, withdrawn,
                            sources=source.headers(paths), read_slice=source.key_slice,
                            written_first=deliveries.queue)
    deliveries.queue(objects)
    log.info("job %d: %s risk, %.1f mL blood; %s written, %d deliveries queued", job.id,
             findings.risk_tier, findings.volumes_ml.get("hemorrhage", 0.0),
             "+".join(sorted(objects)) or "no objects", deliveries.count)
    result = findings.to_json_dict()
    result["outputs"] = {"directory": str(out_dir),
                         "objects": {kind: [path.name for path in paths]
                                     for kind, paths in objects.items()}}
    return result


def _withdraw_earlier(index: Index, job: ClaimedJob) -> list[int]:
    """This version replaces the earlier ones that may have been incomplete: their unsent
    results are withdrawn (the receiver did when this version began; done again here for
    results queued after that). Returns the versions of which nothing was sent."""
    versions = earlier_incomplete_versions(index, job)
    with index.engine.begin() as conn:
        for version in versions:
            outbox.withdraw(conn, job.series_uid, version)
        return outbox.never_sent(conn, job.series_uid, versions)


class _Deliveries:
    """Queues each kind of object once, for the destinations that want it: the SEG and SR as
    soon as they are written (a trauma team waits for them), the rest when it is."""

    def __init__(self, settings: Settings, index: Index, job: ClaimedJob) -> None:
        self.settings, self.index, self.job = settings, index, job
        self.hold_s = _delivery_hold(settings, index, job)
        self.kinds: set[str] = set()
        self.count = 0

    def queue(self, objects: dict[str, list[Path]]) -> None:
        fresh = {kind: paths for kind, paths in objects.items() if kind not in self.kinds}
        self.kinds |= fresh.keys()
        if fresh and self.hold_s is not None:
            job = self.job
            self.count += queue_delivery(self.settings, self.index, job.study_uid, job.series_uid,
                                         job.series_version, fresh, hold_s=self.hold_s)


def _delivery_hold(settings: Settings, index: Index, job: ClaimedJob) -> float | None:
    """How long the job's results wait before they are sent; None: they are not sent."""
    if not job.incomplete_reason:
        return 0.0
    latest = latest_version(index, job)
    if latest > job.series_version:
        log.info("job %d: series %s v%d may be incomplete and v%d has arrived: not sent", job.id,
                 job.series_uid, job.series_version, latest)
        return None
    hold_s = settings.completion.incomplete_hold_s
    log.warning("job %d: series %s v%d may be incomplete (%s): its results wait %g s for a "
                "later version before they are sent", job.id, job.series_uid,
                job.series_version, job.incomplete_reason, hold_s)
    return hold_s
