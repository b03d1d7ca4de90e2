"""The Findings of a study, as the worker stored them, and a study's overall state.

A study's Findings are the result of the latest finished job of one of its
series' *current* version (``jobs.result`` holds ``Findings.to_json_dict()``,
pipeline/README.md). A result that is not a Findings record (an older
placeholder) is ignored.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import defer, selectinload

from node.store.database import Index, Instance, Job, JobState, Series, Study
from node.store.status import ALL, Page, series_state

FINDINGS_KEYS = frozenset({"schema_version", "report", "volumes_ml", "organs", "recommendation",
                           "provenance", "risk_tier"})
# When no Findings exist yet, the study shows the most telling series state.
STATE_ORDER = ("running", "queued", "receiving", "failed", "skipped", "done")


@dataclass
class StudyFindings:
    study_uid: str
    series_uid: str
    series_version: int
    job_id: int
    finished_at: dt.datetime | None
    findings: dict[str, Any]

    def meta(self) -> dict[str, Any]:
        return {"study_uid": self.study_uid, "series_uid": self.series_uid,
                "series_version": self.series_version, "job_id": self.job_id,
                "finished_at": _iso(self.finished_at)}


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value is not None else None


def is_findings(result: Any) -> bool:
    return isinstance(result, dict) and FINDINGS_KEYS <= result.keys()


def findings_of(result: Any) -> dict[str, Any] | None:
    """The Findings dict of a job result: the result itself, or its "findings" entry
    (should the worker store more beside it); None for anything else."""
    if is_findings(result):
        return result
    if isinstance(result, dict) and is_findings(result.get("findings")):
        return result["findings"]
    return None


def latest_findings(index: Index, study_uid: str) -> StudyFindings | None:
    """The Findings of the latest done job of a series' current version, or None."""
    with index.session() as session:
        rows = session.execute(
            select(Job, Series.series_uid)
            .join(Series, Job.series_id == Series.id).join(Study, Series.study_id == Study.id)
            .where(Study.study_uid == study_uid, Job.state == JobState.DONE.value,
                   Job.series_version == Series.version)
            .order_by(Job.finished_at.desc(), Job.id.desc())).all()
        for job, series_uid in rows:
            findings = findings_of(job.result)
            if findings is not None:
                return StudyFindings(study_uid, series_uid, job.series_version, job.id,
                                     job.finished_at, findings)
    return None


def chosen_images(index: Index, spool_dir, findings: dict[str, Any]) -> list[tuple[str, int | None]]:
    """The DICOM files (and frames) of the slices the triage chose, in its order."""
    slices = (findings.get("series") or {}).get("slices") or []
    chosen = [slices[i] for i in (findings.get("triage") or {}).get("chosen") or []
              if 0 <= i < len(slices)]
    uids = {s["sop_instance_uid"] for s in chosen}
    if not uids:
        return []
    with index.session() as session:
        paths = dict(session.execute(select(Instance.sop_instance_uid, Instance.path)
                                     .where(Instance.sop_instance_uid.in_(uids))).all())
    return [(str(spool_dir / paths[s["sop_instance_uid"]]), s.get("frame")) for s in chosen
            if s["sop_instance_uid"] in paths]


def study_state(series: list[Series], has_findings: bool) -> str:
    """done when Findings are there; else the most telling state of its series."""
    if has_findings:
        return "done"
    states = {series_state(s) for s in series}
    for state in STATE_ORDER:
        if state in states:
            return state
    return "receiving" if not states else sorted(states)[0]


def summary(findings: dict[str, Any] | None) -> dict[str, Any] | None:
    """The few values a study list shows."""
    if findings is None:
        return None
    graded = {k: v.get("aast_grade") for k, v in findings.get("organs", {}).items()
              if v.get("aast_grade") is not None}
    return {"risk_tier": findings.get("risk_tier"),
            "volumes_ml": findings.get("volumes_ml"),
            "aast_grades": graded,
            "recommendation": (findings.get("recommendation") or {}).get("summary")}


def studies_overview(index: Index, page: Page = ALL,
                     question_counts: Callable[[list[int]], dict[int, int]] | None = None
                     ) -> list[dict[str, Any]]:
    """The studies of the page with their state and a summary of their Findings
    (results loaded only for the jobs that hold them); question_counts gives the
    questions asked of the page's studies (by primary key)."""
    with index.session() as session:
        studies = session.execute(page.apply(select(Study)).options(
            selectinload(Study.series).selectinload(Series.jobs).options(defer(Job.result)))
        ).scalars().all()
        asked = question_counts([s.id for s in studies]) if question_counts else {}
        out = []
        for study in studies:
            done = [j for s in study.series for j in s.jobs
                    if j.state == JobState.DONE.value and j.series_version == s.version]
            done.sort(key=lambda j: (j.finished_at or dt.datetime.min, j.id), reverse=True)
            found = None
            for job in done:
                result = findings_of(session.execute(
                    select(Job.result).where(Job.id == job.id)).scalar())
                if result is not None:
                    found = (job, result)
                    break
            out.append({
                "study_uid": study.study_uid,
                "received_at": _iso(study.created_at),
                "state": study_state(list(study.series), found is not None),
                "series": len(study.series),
                "findings": summary(found[1]) if found else None,
                "questions": asked.get(study.id, 0),
            })
        return out


def study_detail(index: Index, study_uid: str, has_findings: bool) -> dict[str, Any] | None:
    """One study: its state, its series and their states (without the job results)."""
    with index.session() as session:
        study = session.execute(select(Study).where(Study.study_uid == study_uid).options(
            selectinload(Study.series).selectinload(Series.jobs).options(defer(Job.result)))
        ).scalar()
        if study is None:
            return None
        series = [{
            "series_uid": s.series_uid, "modality": s.modality, "state": series_state(s),
            "version": s.version, "instances": s.instance_count,
            "expected_instances": s.expected_count, "completed_at": _iso(s.completed_at),
            "skip_reason": s.skip_reason, "incomplete_reason": s.incomplete_reason,
            "jobs": [{"id": j.id, "series_version": j.series_version, "state": j.state,
                      "incomplete_reason": j.incomplete_reason,
                      "attempts": j.attempts, "error": j.error,
                      "started_at": _iso(j.started_at), "finished_at": _iso(j.finished_at)}
                     for j in s.jobs],
        } for s in study.series]
        return {"study_uid": study.study_uid, "received_at": _iso(study.created_at),
                "state": study_state(list(study.series), has_findings), "series": series}
