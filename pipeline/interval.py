"""Interval change against the patient's prior study: hemorrhage volume then and now,
collections new, resolved or persisting by compartment.

The node finds and analyses the prior (node.prior); this module only compares two
Findings, or says why there was nothing to compare with. Its result is Findings.interval,
which the report, the SR's comparison text and the Q&A read.
"""

from __future__ import annotations

from typing import Any

from pipeline.findings import Findings

# A compartment holding less than this is noise at the segmentation's resolution, not a
# collection that appeared or resolved.
MIN_COLLECTION_ML = 1.0


def _collections(findings: Findings) -> dict[str, float]:
    return {region: ml for region, ml in findings.volumes_by_region_ml.items()
            if ml >= MIN_COLLECTION_ML}


def _names(regions: list[str]) -> str:
    return ", ".join(r.replace("_", " ") for r in regions) or "none"


def _dated(study_date: str) -> str:
    """YYYYMMDD as YYYY-MM-DD (a DICOM DA); anything else as given."""
    d = study_date or ""
    return f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) == 8 and d.isdigit() else (d or "undated")


def not_compared(why: str) -> dict[str, Any]:
    """No prior to compare with: stated, so the reader knows it was looked for."""
    return {"compared": False, "why": why,
            "statement": f"Comparison with a prior study: none made ({why})."}


def compare(current: Findings, prior: Findings, prior_study_uid: str,
            prior_study_date: str) -> dict[str, Any]:
    """The change from the prior study's Findings to the current one's."""
    if not prior.assessment.assessed:
        return not_compared(f"the prior study of {_dated(prior_study_date)} could not be "
                            "assessed: " + "; ".join(prior.assessment.reasons))
    then = round(prior.volumes_ml.get("hemorrhage", 0.0), 1)
    now = round(current.volumes_ml.get("hemorrhage", 0.0), 1)
    before, after = _collections(prior), _collections(current)
    new = sorted(set(after) - set(before))
    resolved = sorted(set(before) - set(after))
    persisting = sorted(set(before) & set(after))
    change = round(now - then, 1)
    trend = "increased" if change > 0 else "decreased" if change < 0 else "unchanged"
    statement = (
        f"Comparison with the prior CT of {_dated(prior_study_date)}: hemorrhage {trend}, "
        f"{now:.1f} mL now versus {then:.1f} mL then ({change:+.1f} mL). "
        f"New collections: {_names(new)}. Resolved collections: {_names(resolved)}. "
        f"Persisting: {_names(persisting)}.")
    return {"compared": True, "prior_study_uid": prior_study_uid,
            "prior_study_date": prior_study_date,
            "hemorrhage_ml": {"prior": then, "current": now, "change": change},
            "collections_ml": {"prior": before, "current": after},
            "new": new, "resolved": resolved, "persisting": persisting,
            "statement": statement}


def attach(findings: Findings, interval: dict[str, Any]) -> None:
    """The comparison into the Findings and at the end of their report."""
    findings.interval = interval
    findings.report = findings.report.rstrip() + "\n\n" + interval["statement"]
