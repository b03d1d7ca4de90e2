"""The summary a reader sees first, as lines of text: the summary page of the
Secondary Capture series and the head of the report PDF."""

from __future__ import annotations

from dicom_out.device import Algorithm
from pipeline.findings import Findings

TITLE = "AI hemorrhage summary, abdominal trauma CT"


def tier_text(tier: str) -> str:
    """'not_assessed' -> 'NOT ASSESSED': any tier the pipeline names, as a reader reads it."""
    return tier.replace("_", " ").strip().upper() or "UNKNOWN"


def volume_lines(findings: Findings) -> list[str]:
    volumes = findings.volumes_ml
    return [f"Hemorrhage (all blood, blush included): {volumes.get('hemorrhage', 0.0):.1f} mL",
            f"Active extravasation (contrast blush): "
            f"{volumes.get('active_extravasation', 0.0):.1f} mL"]


def summary_lines(findings: Findings, algorithm: Algorithm) -> list[str]:
    """Volumes, risk tier and why, the recommendation, the research-use statement.
    Lines starting with '- ' are list items; '' separates paragraphs."""
    rec = findings.recommendation
    return [
        *volume_lines(findings),
        f"Risk tier: {tier_text(findings.risk_tier)}",
        *[f"- {reason}" for reason in findings.risk_tier_reasons],
        "",
        f"Recommendation (EAST-aligned decision support; hemodynamic status: "
        f"{rec.hemodynamic_status}): {rec.summary}",
        *[f"- {action}" for action in rec.actions if action != rec.summary],
        "",
        findings.research_use,
        algorithm.notice(),
    ]
