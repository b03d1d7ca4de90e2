"""The re-report once the prior is analysed: the amendment.

A job of a new study S that ran before S's prior study was analysed (one worker, a prior
moved late, prior.wait_s exceeded) reported "Comparison with a prior study: none made
(...)", its Findings.interval marked awaiting_prior (node.prior.comparison). Once the
prior's Findings exist, each such result of S (the latest done job of each series'
current version) is re-reported:

- the Findings get interval.compare(...) in place of the earlier statement (the report's
  "none made" sentence is replaced, not appended to);
- a new SR instance in the same SR series (SOP Instance UID derived from the series
  version and the prior: uids.SR_AMENDED_INSTANCE, Instance Number 2) carries the
  comparison, references the same SEG and names the version's first SR in
  PredecessorDocumentsSequence, so that a viewer shows that it supersedes it; written as
  sr-amended.dcm beside it, with findings.json and report.txt replaced;
- the amended SR is queued to the destinations that take SRs (the same outbox), after
  the first SR where that one is still held;
- the job's stored result (jobs.result) is replaced, so that the findings endpoint, the
  report and the Q&A state the interval change. The earlier SR's own file and outbox
  rows are left as they were. (The summary SC, PDF and KOS are not made again.) A later
  version of the series names the amended SR as its predecessor (results.previous_sr).

Who checks (after_job, from the worker once jobs.finish has committed): the prior's job
(its study is IS_PRIOR of S) and S's own job when its result awaits the prior. Each checks
after its own commit, so at least one of them sees both results; both may, in two
processes or on two nodes sharing the data directory and database. Hence every step is
idempotent: the SR file is created exclusively (written aside, then os.link to its name,
which fails when it exists: the one that links made it, the other uses that file), the
outbox keeps one row per SOP instance and destination, and a result already amended is
not amended again. A process that dies midway leaves a result still awaiting the prior,
finished by the next check.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select, update

from dicom_out import uids
from dicom_out.sr import build_sr
from pipeline import interval
from pipeline.findings import Findings

from node import __version__
from node.config import Settings
from node.prior import state
from node.prior.comparison import prior_findings
from node.store import jobs
from node.store.database import Index, Job, JobState
from node.store.spool import results_dir
from node.store.tables import OutboxItem, OutboxState, Series, Study
from node.work.results import ALGORITHM_NAME, AMENDED_SR, aside, queue_delivery, write_atomically

log = logging.getLogger("trauma_node.prior")

AMENDED_INSTANCE_NUMBER = 2  # the version's first SR is instance 1 of the same series


@dataclass(frozen=True)
class _Awaiting:
    """A done job of the study's current series version whose result awaits the prior."""
    job_id: int
    series_id: int
    series_uid: str
    series_version: int
    incomplete_reason: str | None
    result: dict[str, Any]


def after_job(settings: Settings, index: Index, study_uid: str, result: dict | None) -> int:
    """After a job of study_uid finished (its result committed): the amendments it makes
    possible, made. Returns how many were made (0 when there was nothing to amend)."""
    if not settings.prior.enabled:
        return 0
    mine = state.read(settings.data_dir, study_uid) or {}
    if mine.get("state") == state.IS_PRIOR and mine.get("of"):
        return amend_study(settings, index, str(mine["of"]))
    if ((result or {}).get("interval") or {}).get("awaiting_prior"):
        return amend_study(settings, index, study_uid)
    return 0


def amend_study(settings: Settings, index: Index, study_uid: str) -> int:
    """Amend the results of study_uid that await its prior, when the prior's Findings
    exist; returns how many amended SRs this call made."""
    now = state.read(settings.data_dir, study_uid) or {}
    if now.get("state") != state.RETRIEVED:
        return 0
    prior_uid, prior_date = str(now["prior_study_uid"]), str(now.get("prior_study_date", ""))
    awaiting = _awaiting(index, study_uid)
    if not awaiting:
        return 0
    prior = prior_findings(index, prior_uid)
    if prior is None:
        return 0  # the prior's job will look again when it is done
    made = 0
    for job in awaiting:
        try:
            made += amend_job(settings, index, study_uid, job, prior, prior_uid, prior_date)
        except Exception as exc:  # noqa: BLE001 - one series' failure leaves the others
            log.warning("job %d: the amendment with the prior study %s failed: %s: %s",
                        job.job_id, prior_uid, type(exc).__name__, exc)
    return made


def _awaiting(index: Index, study_uid: str) -> list[_Awaiting]:
    with index.engine.connect() as conn:
        rows = conn.execute(
            select(Job.id, Job.series_id, Series.series_uid, Job.series_version,
                   Job.incomplete_reason, Job.result)
            .join(Series, Job.series_id == Series.id).join(Study, Series.study_id == Study.id)
            .where(Study.study_uid == study_uid, Job.state == JobState.DONE.value,
                   Job.series_version == Series.version, Job.result.is_not(None))
            .order_by(Job.id)).all()
    return [_Awaiting(*row) for row in rows
            if isinstance(row.result, dict) and _awaits(row.result)]


def _awaits(result: dict[str, Any]) -> bool:
    change = result.get("interval") or {}
    return bool(change.get("awaiting_prior")) and not change.get("compared")


def amend_job(settings: Settings, index: Index, study_uid: str, job: _Awaiting,
              prior: Findings, prior_uid: str, prior_date: str) -> int:
    """One result amended; returns 1 when this call created the amended SR, else 0 (made
    by another process, whose steps this one completes where they were left)."""
    out_dir = results_dir(settings, study_uid, job.series_uid, job.series_version)
    outputs = dict(job.result.get("outputs") or {})
    names = outputs.get("objects") or {}
    earlier = pydicom.dcmread(out_dir / (names.get("sr") or ["sr.dcm"])[0],
                              stop_before_pixels=True)
    findings = Findings.from_json_dict(job.result)
    if findings.labels_file and (out_dir / findings.labels_file).is_file():
        findings.labels = np.load(out_dir / findings.labels_file, allow_pickle=False)
    _replace_interval(findings, interval.compare(findings, prior, prior_uid, prior_date))

    sop_uid = uids.output_uid(job.series_uid, job.series_version,
                              uids.SR_AMENDED_INSTANCE.format(prior=prior_uid))
    path = out_dir / AMENDED_SR
    made = False
    if not path.is_file():
        made = _create_exclusively(path, _amended_sr(settings, index, job, findings, out_dir,
                                                     names, earlier, sop_uid))
    document = json.dumps(findings.to_json_dict(), indent=2).encode()
    write_atomically(out_dir / "findings.json", lambda h: h.write(document))
    write_atomically(out_dir / "report.txt", lambda h: h.write(findings.report.encode()))

    hold_s = _delivery_hold(index, str(earlier.SOPInstanceUID))
    queued = 0
    if hold_s is not None:
        queued = queue_delivery(settings, index, study_uid, job.series_uid, job.series_version,
                                {"sr": [path]}, hold_s=hold_s)
    result = findings.to_json_dict()
    result["outputs"] = {**outputs, "amended": {
        "sr": [AMENDED_SR], "sop_instance_uid": sop_uid,
        "supersedes": str(earlier.SOPInstanceUID), "prior_study_uid": prior_uid,
        "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}}
    with index.engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == job.job_id, Job.state == JobState.DONE.value)
                     .values(result=result))
    if made:
        log.info("job %d: series %s v%d re-reported with the comparison to the prior study %s: "
                 "amended SR %s supersedes %s, %d deliveries queued", job.job_id,
                 job.series_uid, job.series_version, prior_uid, sop_uid, earlier.SOPInstanceUID,
                 queued)
    return int(made)


def _replace_interval(findings: Findings, change: dict[str, Any]) -> None:
    """The comparison in place of the earlier "none made" statement (report included)."""
    before = str(findings.interval.get("statement") or "")
    if before and before in findings.report:
        findings.report = findings.report.replace(before, change["statement"])
        findings.interval = change
    else:
        interval.attach(findings, change)


def _amended_sr(settings: Settings, index: Index, job: _Awaiting, findings: Findings,
                out_dir: Path, names: dict[str, list[str]], earlier: Dataset,
                sop_uid: str) -> Dataset:
    """The version's SR again, with the comparison, superseding the first."""
    claimed = jobs.ClaimedJob(job.job_id, job.series_id, job.series_uid, "", job.series_version,
                              0, job.incomplete_reason)
    sources = [pydicom.dcmread(settings.spool_dir / p, stop_before_pixels=True)
               for p in jobs.instance_paths(index, claimed)]
    seg_path = out_dir / (names.get("seg") or ["seg.dcm"])[0]
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True) if seg_path.is_file() else None
    return build_sr(findings, sources, seg, series_version=job.series_version,
                    algorithm_name=ALGORITHM_NAME, algorithm_version=__version__,
                    previous_sr=earlier, sop_instance_uid=sop_uid,
                    instance_number=AMENDED_INSTANCE_NUMBER)


def _create_exclusively(path: Path, dataset: Dataset) -> bool:
    """Write the file under its name unless it exists: True when this call created it."""
    temporary = aside(path)
    try:
        dataset.save_as(temporary)
        os.link(temporary, path)  # atomic, and fails when the name exists
        return True
    except FileExistsError:
        return False
    finally:
        temporary.unlink(missing_ok=True)


def _delivery_hold(index: Index, first_sr_uid: str) -> float | None:
    """Seconds the amended SR waits: until the first SR may go where it is still held (a
    series version that may be incomplete); None when the first was withdrawn."""
    with index.engine.connect() as conn:
        rows = conn.execute(select(OutboxItem.state, OutboxItem.next_attempt_at).where(
            OutboxItem.sop_instance_uid == first_sr_uid)).all()
    if rows and all(r.state == OutboxState.WITHDRAWN.value for r in rows):
        return None
    pending = [r.next_attempt_at or 0.0 for r in rows if r.state == OutboxState.PENDING.value]
    return max(0.0, max(pending, default=0.0) - time.time())
