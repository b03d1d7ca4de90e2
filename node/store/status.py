"""What the node holds and where each series stands: one query for the CLI and HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import selectinload

from node.store import outbox
from node.alerts import store as alert_store
from node.store.database import Index, Series, Study


def _iso(value) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value is not None else None


@dataclass(frozen=True)
class Page:
    """Which studies a listing shows: all of them oldest first (the CLI), or a page of
    them newest first (the HTTP API: a node holds thousands of studies after a while)."""

    limit: int | None = None
    offset: int = 0

    def apply(self, statement: Select) -> Select:
        if self.limit is None:
            return statement.order_by(Study.id)
        return statement.order_by(Study.id.desc()).limit(self.limit).offset(self.offset)


ALL = Page()


def study_count(index: Index) -> int:
    with index.session() as session:
        return int(session.execute(select(func.count(Study.id))).scalar_one())


def series_state(series: Series) -> str:
    """receiving / skipped, else the state of the job of the current version."""
    if series.state != "queued":
        return series.state
    current = [j for j in series.jobs if j.series_version == series.version]
    return current[-1].state if current else series.state


def studies(index: Index, page: Page = ALL) -> list[dict[str, Any]]:
    with index.session() as session:
        rows = session.execute(page.apply(select(Study)).options(
            selectinload(Study.series).selectinload(Series.jobs))).scalars().all()
        out = []
        for study in rows:
            out.append({
                "study_uid": study.study_uid,
                "received_at": _iso(study.created_at),
                "series": [_series(s) for s in study.series],
                "deliveries": outbox.items_for_study(index, study.study_uid),
                "alerts": alert_store.alerts_for_study(index, study.study_uid),
            })
        return out


def _series(series: Series) -> dict[str, Any]:
    return {
        "series_uid": series.series_uid,
        "modality": series.modality,
        "state": series_state(series),
        "version": series.version,
        "instances": series.instance_count,
        "expected_instances": series.expected_count,
        "completed_at": _iso(series.completed_at),
        "skip_reason": series.skip_reason,
        "incomplete_reason": series.incomplete_reason,  # of the current version
        "jobs": [{
            "id": job.id,
            "series_version": job.series_version,
            "state": job.state,
            "incomplete_reason": job.incomplete_reason,  # its results were held
            "attempts": job.attempts,
            "worker": job.worker,  # host/role-N
            "error": job.error,
            "result": job.result,
            "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at),
        } for job in series.jobs],
    }


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    """Align every column but the last, which may be long."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "  " + row[-1]
            for row in rows]


def table(index: Index) -> str:
    """The status as plain-text tables for terminals: series, then deliveries."""
    series_rows = [("STUDY", "SERIES", "MOD", "STATE", "VER", "INST", "JOB", "WORKER", "DETAIL")]
    delivery_rows = [("STUDY", "OBJECT", "SOP INSTANCE", "DESTINATION", "STATE", "TRIES",
                      "LAST ERROR")]
    for study in studies(index):
        for s in study["series"]:
            job = s["jobs"][-1] if s["jobs"] else None
            detail = (s["skip_reason"] or (job["error"] if job and job["error"] else "")
                      or (f"may be incomplete: {job['incomplete_reason']}"
                          if job and job["incomplete_reason"] else ""))
            series_rows.append((study["study_uid"], s["series_uid"], s["modality"] or "",
                                s["state"], str(s["version"]), str(s["instances"]),
                                f"{job['id']}:{job['state']}" if job else "-",
                                (job["worker"] if job else None) or "-", detail))
        for d in study["deliveries"]:
            delivery_rows.append((study["study_uid"], d["kind"], d["sop_instance_uid"],
                                  d["destination"], d["state"], str(d["attempts"]),
                                  d["last_error"] or ""))
        for a in study["alerts"]:  # critical-result alerts (node.alerts) beside the objects
            delivery_rows.append((study["study_uid"], "alert", a["alert_id"], a["receiver"],
                                  a["state"], str(a["attempts"]), a["last_error"] or ""))
    if len(series_rows) == 1:
        return "(no studies received yet)"
    text = _columns(series_rows)
    if len(delivery_rows) > 1:
        text += ["", *_columns(delivery_rows)]
    return "\n".join(line.rstrip() for line in text)
