"""In a job: the interval change of its study against the prior (pipeline.interval), once
the lookup loop has settled and the prior's Findings exist, waiting prior.wait_s at most.

Why wait in the job: the prior is usually moved and analysed (by another worker) while the
new study's series is still being received and analysed, so the comparison is ready
with the first results. With no other worker alive, the job does not wait for an
unanalysed prior: it holds the worker the prior would need. A prior not analysed in time
is stated as such in the results, marked awaiting_prior; once the prior's Findings exist
the results are re-reported with the comparison (node.prior.amendment: an amended SR
that supersedes the first, the report, findings.json and the job's result updated).
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from node.config import Settings
from node.prior import state
from node.store.database import Index, Job, JobState
from node.store.jobs import workers_alive
from node.store.tables import Series, Study
from pipeline import interval
from pipeline.findings import Findings


def prior_findings(index: Index, study_uid: str) -> Findings | None:
    """The prior study's latest finished analysis."""
    with index.engine.connect() as conn:
        result = conn.execute(
            select(Job.result).join(Series, Job.series_id == Series.id)
            .join(Study, Series.study_id == Study.id)
            .where(Study.study_uid == study_uid, Job.state == JobState.DONE.value,
                   Job.result.is_not(None)).order_by(Job.id.desc()).limit(1)).scalar()
    return Findings.from_json_dict(result) if result else None


def interval_change(settings: Settings, index: Index, study_uid: str,
                    current: Findings) -> dict[str, Any] | None:
    """Findings.interval for the study, or None when there is nothing to say (the lookup
    is off, or the study is itself a retrieved prior)."""
    prior = settings.prior
    if not prior.enabled:
        return None
    deadline = time.monotonic() + prior.wait_s
    while True:
        now = state.read(settings.data_dir, study_uid) or {"state": None}
        if now["state"] == state.IS_PRIOR:
            return None
        if now["state"] in (state.NO_PRIOR, state.UNANSWERED):
            return interval.not_compared(now["why"])
        if now["state"] == state.RETRIEVED:
            found = prior_findings(index, now["prior_study_uid"])
            if found is not None:
                return interval.compare(current, found, now["prior_study_uid"],
                                        now["prior_study_date"])
            if len(workers_alive(index, settings.workers.stale_after_s)) < 2:
                # This job holds the only worker: waiting would delay its result and
                # never get the prior analysed.
                return _awaiting(interval.not_compared(
                    f"the prior study of {now['prior_study_date']} was retrieved but not yet "
                    "analysed, and no other worker was free to analyse it"))
        if time.monotonic() >= deadline:
            break
        time.sleep(prior.poll_interval_s)
    if now["state"] == state.RETRIEVED:
        return _awaiting(interval.not_compared(
            f"the prior study was retrieved but not analysed within {prior.wait_s:g} s "
            "(prior.wait_s)"))
    return _awaiting(interval.not_compared(f"the lookup in the PACS did not finish within "
                                           f"{prior.wait_s:g} s (prior.wait_s)"))


def _awaiting(change: dict[str, Any]) -> dict[str, Any]:
    """Not compared yet, but a prior may still come: the amendment looks for this mark."""
    return {**change, "awaiting_prior": True}
