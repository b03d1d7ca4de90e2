"""The radiologist's verdict on each finding of an analysis, and the node's agreement with
its readers over time.

What can be judged (judgeable): the findings of the study's latest analysis, named as the
AI SR's tracking identifiers name them (dicom_out.sr): ``hemorrhage`` (all blood, mL),
``active_extravasation`` (the blush, mL), ``contained_vascular_injury`` (when found),
``organ/<organ>`` for every organ the anatomy step located (injured with its AAST grade
lower bound, or no parenchymal injury seen; the blood inside it in mL), and ``risk_tier``.
Each finding type is credited to the backend of the stage that made it, as the AI SR's
algorithm identification does: the segmentation backend for the volumes, the grading
backend for organ injuries and the risk tier (name, version, and the weights' fingerprint
when there are weights), so that agreement can be followed per backend version.

A verdict (table ``verdicts``) is ``accepted``, ``rejected`` or ``corrected`` (a corrected
volume in mL for a volume finding, else a note saying what is right), with an optional
note, the reader's account and the time. It judges one job (series version): a verdict
sent for another job than the latest is refused (409), so nobody judges what they did not
see. A later verdict of the same reader on the same finding of the same job supersedes the
earlier one (``superseded_by_id``); every verdict is kept.

Agreement (agreement()): from the current verdicts, per time bucket (day, week, month of
the verdict), finding type and backend version: judged, accepted, rejected, corrected,
the agreement rate accepted / judged (a correction is a disagreement), and the mean
absolute difference between the AI's and the corrected volume.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import select

from node.store import study_findings
from node.store.database import Index
from node.store.spool import check_uid
from node.store.tables import Reader, Verdict, utcnow

VERDICTS = ("accepted", "rejected", "corrected")
FINDING_TYPES = ("hemorrhage", "active_extravasation", "contained_vascular_injury",
                 "organ_injury", "risk_tier")
BUCKETS = ("day", "week", "month")
NOTE_MAX = 2000
MAX_VOLUME_ML = 20000.0  # more than an adult's blood volume: a typing error


class VerdictError(ValueError):
    """A verdict that cannot be stored; status: the HTTP status that says why."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Judgeable:
    """One finding of an analysis that a reader can judge."""
    key: str  # hemorrhage | active_extravasation | organ/spleen | risk_tier ...
    type: str  # one of FINDING_TYPES
    label: str
    ai_value: str  # what the AI said, for people
    ai_volume_ml: float | None  # the volume a correction replaces; None: not a volume
    backend: str
    backend_version: str


def _stage(findings: dict[str, Any], stage: str) -> tuple[str, str]:
    for s in (findings.get("provenance") or {}).get("stages") or []:
        if s.get("stage") == stage:
            version = str(s.get("version") or "")
            if s.get("weights"):
                version += f" weights {str(s['weights'])[:24]}"
            return str(s.get("backend") or "unknown")[:64], version[:128] or "unknown"
    return "unknown", "unknown"


def judgeable(findings: dict[str, Any]) -> list[Judgeable]:
    """The findings of one Findings record a reader can judge, in the page's order."""
    volumes = findings.get("volumes_ml") or {}
    seg = _stage(findings, "segmentation")
    grading = _stage(findings, "grading")
    out: list[Judgeable] = []
    blood = float(volumes.get("hemorrhage") or 0.0)
    out.append(Judgeable("hemorrhage", "hemorrhage", label_of("hemorrhage"),
                         f"{blood:.1f} mL", round(blood, 3), *seg))
    blush = float(volumes.get("active_extravasation") or 0.0)
    out.append(Judgeable("active_extravasation", "active_extravasation", "Active extravasation",
                         f"present, {blush:.1f} mL" if blush > 0 else "absent", round(blush, 3),
                         *seg))
    contained = float(volumes.get("contained_vascular_injury") or 0.0)
    if contained > 0:
        out.append(Judgeable("contained_vascular_injury", "contained_vascular_injury",
                             "Contained vascular injury", f"present, {contained:.1f} mL",
                             round(contained, 3), *seg))
    for name, organ in (findings.get("organs") or {}).items():
        if not organ.get("located"):
            continue
        inside = float(organ.get("intraparenchymal_blood_ml") or 0.0)
        if organ.get("injured"):
            grade = organ.get("aast_grade")
            said = "injured" + (f", AAST grade ≥ {grade}" if grade is not None else "")
            said += f", {inside:.1f} mL within"
        else:
            said = "no parenchymal injury seen"
        out.append(Judgeable(f"organ/{name}", "organ_injury",
                             label_of(f"organ/{name}"), said,
                             round(inside, 3), *grading))
    tier = str(findings.get("risk_tier") or "unknown")
    out.append(Judgeable("risk_tier", "risk_tier", "Risk tier", tier.replace("_", " "), None,
                         *grading))
    return out


def label_of(key: str) -> str:
    """The name people read for a finding key."""
    fixed = {"hemorrhage": "Hemorrhage (all blood)", "active_extravasation": "Active extravasation",
             "contained_vascular_injury": "Contained vascular injury", "risk_tier": "Risk tier"}
    if key in fixed:
        return fixed[key]
    if key.startswith("organ/"):
        return f"{key[6:].replace('_', ' ').capitalize()} injury"
    return key


def assessments_dir(data_dir: Path, study_uid: str) -> Path:
    """Where the study's verdict SRs lie: data/results/<study>/assessments/ (written by
    node.verdicts.archive, removed with the study by node.store.retention)."""
    return data_dir / "results" / check_uid(study_uid, "Study Instance UID") / "assessments"


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value is not None else None


def _row_dict(v: Verdict, reader: Reader) -> dict[str, Any]:
    return {"id": v.id, "study_uid": v.study_uid, "series_uid": v.series_uid,
            "series_version": v.series_version, "job_id": v.job_id,
            "finding_key": v.finding_key, "finding_type": v.finding_type,
            "ai_value": v.ai_value, "ai_volume_ml": v.ai_volume_ml,
            "backend": v.backend, "backend_version": v.backend_version,
            "pipeline_version": v.pipeline_version, "verdict": v.verdict,
            "corrected_volume_ml": v.corrected_volume_ml, "note": v.note,
            "reader": reader.name, "reader_display_name": reader.display_name,
            "created_at": _iso(v.created_at), "current": v.superseded_by_id is None,
            "superseded_by": v.superseded_by_id}


def _check(finding: Judgeable, verdict: str, corrected_volume_ml: float | None,
           note: str | None) -> tuple[float | None, str | None]:
    if verdict not in VERDICTS:
        raise VerdictError(f"verdict: one of {', '.join(VERDICTS)}, not {verdict[:40]!r}")
    note = (note or "").strip() or None
    if note is not None and len(note) > NOTE_MAX:
        raise VerdictError(f"note: at most {NOTE_MAX} characters")
    if corrected_volume_ml is not None:
        if verdict != "corrected":
            raise VerdictError("corrected_volume_ml goes only with the verdict 'corrected'")
        if finding.ai_volume_ml is None:
            raise VerdictError(f"{finding.key} is not a volume: say what is right in the note")
        if not math.isfinite(corrected_volume_ml) or not 0 <= corrected_volume_ml <= MAX_VOLUME_ML:
            raise VerdictError(f"corrected_volume_ml: a volume in mL from 0 to {MAX_VOLUME_ML:g}")
        corrected_volume_ml = round(float(corrected_volume_ml), 3)
    if verdict == "corrected" and corrected_volume_ml is None and note is None:
        raise VerdictError("a correction needs the corrected volume (corrected_volume_ml) or a "
                           "note saying what is right")
    return corrected_volume_ml, note


def record(index: Index, study_uid: str, finding_key: str, verdict: str, reader_id: int,
           corrected_volume_ml: float | None = None, note: str | None = None,
           job_id: int | None = None) -> dict[str, Any]:
    """Store one verdict on a finding of the study's latest analysis; the reader's earlier
    verdict on it, if any, is superseded. job_id: the analysis the reader saw (409 when it
    is no longer the latest). Returns the verdict, with ``superseded`` (the earlier ids)."""
    found = study_findings.latest_findings(index, study_uid)
    if found is None:
        raise VerdictError(f"study {study_uid} has no Findings to judge yet", 409)
    if job_id is not None and job_id != found.job_id:
        raise VerdictError(f"job {job_id} is no longer the study's latest analysis (job "
                           f"{found.job_id} is): reload the study and judge what it shows", 409)
    by_key = {f.key: f for f in judgeable(found.findings)}
    finding = by_key.get(finding_key)
    if finding is None:
        raise VerdictError(f"finding {finding_key[:80]!r} is not one of this analysis: "
                           f"{', '.join(by_key)}")
    corrected_volume_ml, note = _check(finding, verdict, corrected_volume_ml, note)
    pipeline_version = str((found.findings.get("provenance") or {}).get("pipeline_version") or "")
    with index.session() as session, session.begin():
        reader = session.get(Reader, reader_id)
        if reader is None or reader.disabled_at is not None:
            raise VerdictError("the account is unknown or disabled", 403)
        row = Verdict(study_uid=study_uid, series_uid=found.series_uid,
                      series_version=found.series_version, job_id=found.job_id,
                      finding_key=finding.key, finding_type=finding.type,
                      ai_value=finding.ai_value[:128], ai_volume_ml=finding.ai_volume_ml,
                      backend=finding.backend, backend_version=finding.backend_version,
                      pipeline_version=pipeline_version[:32], verdict=verdict,
                      corrected_volume_ml=corrected_volume_ml, note=note, reader_id=reader_id,
                      created_at=utcnow())
        session.add(row)
        session.flush()
        earlier = session.execute(select(Verdict).where(
            Verdict.job_id == found.job_id, Verdict.finding_key == finding.key,
            Verdict.reader_id == reader_id, Verdict.superseded_by_id.is_(None),
            Verdict.id != row.id)).scalars().all()
        for old in earlier:
            old.superseded_by_id = row.id
        out = _row_dict(row, reader)
        out["superseded"] = [old.id for old in earlier]
        return out


def _query(index: Index, *conditions, current_only: bool = False
           ) -> list[dict[str, Any]]:
    stmt = select(Verdict, Reader).join(Reader, Verdict.reader_id == Reader.id)
    for condition in conditions:
        stmt = stmt.where(condition)
    if current_only:
        stmt = stmt.where(Verdict.superseded_by_id.is_(None))
    with index.session() as session:
        return [_row_dict(v, r) for v, r in session.execute(
            stmt.order_by(Verdict.created_at, Verdict.id)).all()]


def for_study(index: Index, study_uid: str, current_only: bool = False) -> list[dict[str, Any]]:
    """Every verdict on the study's analyses, oldest first (history included unless
    current_only)."""
    return _query(index, Verdict.study_uid == study_uid, current_only=current_only)


def study_view(index: Index, study_uid: str, reader: str | None = None) -> dict[str, Any]:
    """What the page shows: the latest analysis's judgeable findings, each with the current
    verdicts on it (``mine``: the asking reader's), and the whole history."""
    found = study_findings.latest_findings(index, study_uid)
    history = for_study(index, study_uid)
    if found is None:
        return {"study_uid": study_uid, "job_id": None, "findings": [], "verdicts": history}
    current = [v for v in history if v["current"] and v["job_id"] == found.job_id]
    findings = []
    for f in judgeable(found.findings):
        on_it = [v for v in current if v["finding_key"] == f.key]
        findings.append({**asdict(f), "verdicts": on_it,
                         "mine": next((v for v in on_it if v["reader"] == reader), None)})
    return {**found.meta(), "findings": findings, "verdicts": history}


def export(index: Index, since: dt.datetime | None = None, until: dt.datetime | None = None,
           study_uid: str | None = None) -> list[dict[str, Any]]:
    """Every verdict (history included: ``current`` says which stand) made in [since, until)."""
    conditions = []
    if since is not None:
        conditions.append(Verdict.created_at >= since)
    if until is not None:
        conditions.append(Verdict.created_at < until)
    if study_uid is not None:
        conditions.append(Verdict.study_uid == study_uid)
    return _query(index, *conditions)


def bucket_start(when: dt.datetime, by: str) -> dt.date:
    day = when.date()
    if by == "day":
        return day
    if by == "week":  # ISO weeks: from Monday
        return day - dt.timedelta(days=day.weekday())
    if by == "month":
        return day.replace(day=1)
    raise VerdictError(f"by: one of {', '.join(BUCKETS)}")


def _summary(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    rows = list(rows)
    counts = {v: sum(1 for r in rows if r["verdict"] == v) for v in VERDICTS}
    judged = len(rows)
    differences = [abs(r["corrected_volume_ml"] - r["ai_volume_ml"]) for r in rows
                   if r["verdict"] == "corrected" and r["corrected_volume_ml"] is not None
                   and r["ai_volume_ml"] is not None]
    return {"judged": judged, **counts,
            "agreement": round(counts["accepted"] / judged, 4) if judged else None,
            "volume_corrections": len(differences),
            "mean_abs_volume_difference_ml": (round(sum(differences) / len(differences), 3)
                                              if differences else None)}


def agreement(index: Index, by: str = "week", since: dt.datetime | None = None,
              until: dt.datetime | None = None) -> dict[str, Any]:
    """Agreement of the node with its readers, from the current verdicts made in
    [since, until): per time bucket, finding type and backend version (``series``), and
    overall per finding type and per backend version."""
    if by not in BUCKETS:
        raise VerdictError(f"by: one of {', '.join(BUCKETS)}, not {by[:20]!r}")
    rows = [r for r in export(index, since, until) if r["current"]]
    for r in rows:
        r["bucket"] = bucket_start(dt.datetime.fromisoformat(r["created_at"].rstrip("Z")),
                                   by).isoformat()
        r["backend_label"] = f"{r['backend']} {r['backend_version']}"
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    by_type: dict[str, list[dict]] = defaultdict(list)
    by_backend: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["bucket"], r["finding_type"], r["backend_label"])].append(r)
        by_type[r["finding_type"]].append(r)
        by_backend[(r["finding_type"], r["backend_label"])].append(r)
    return {
        "by": by, "since": _iso(since), "until": _iso(until), "overall": _summary(rows),
        "series": [{"bucket": b, "finding_type": t, "backend": label, **_summary(g)}
                   for (b, t, label), g in sorted(groups.items())],
        "by_finding_type": [{"finding_type": t, **_summary(g)} for t, g in sorted(by_type.items())],
        "by_backend": [{"finding_type": t, "backend": label, **_summary(g)}
                       for (t, label), g in sorted(by_backend.items())],
        "definition": ("agreement = accepted / judged, from each reader's current verdict per "
                       "finding; a correction counts as a disagreement; "
                       "mean_abs_volume_difference_ml over the corrections with a volume"),
    }
