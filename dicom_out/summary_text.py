"""The summary a reader sees first, as lines of text: the summary page of the
Secondary Capture series and the head of the report PDF."""

from __future__ import annotations

from dicom_out.device import Algorithm
from pipeline.findings import Findings, incomplete_statement

TITLE = "AI hemorrhage summary, abdominal trauma CT"


def tier_text(tier: str) -> str:
    """'not_assessed' -> 'NOT ASSESSED': any tier the pipeline names, as a reader reads it."""
    return tier.replace("_", " ").strip().upper() or "UNKNOWN"


KIND_TEXT = {"active_bleeding": "active bleeding (grew across the phases)",
             "contained_vascular_injury": "contained vascular injury (pseudoaneurysm)",
             "undetermined": "active bleeding or pseudoaneurysm, not told apart on one phase"}


def volume_lines(findings: Findings) -> list[str]:
    volumes = findings.volumes_ml
    lines = [f"Hemorrhage (all blood, blush included): {volumes.get('hemorrhage', 0.0):.1f} mL",
             f"Active extravasation (contrast blush): "
             f"{volumes.get('active_extravasation', 0.0):.1f} mL"]
    if volumes.get("contained_vascular_injury"):
        lines.append(f"Contained vascular injury (pseudoaneurysm): "
                     f"{volumes['contained_vascular_injury']:.1f} mL")
    return lines


def finding_lines(findings: Findings) -> list[str]:
    """What the volumes alone do not say: each blush's kind, and which organ is injured."""
    lines = [f"- Blush {f.id} ({f.compartment.replace('_', ' ')}, {f.volume_ml:.1f} mL): "
             f"{KIND_TEXT.get(f.kind, f.kind)}" for f in findings.contrast_foci]
    injured = [o for o in findings.organs.values() if o.injured]
    if findings.assessment.assessed:
        lines.append("Organ injury (evidence inside the organ): " + ("; ".join(
            f"{o.organ.replace('_', ' ')}: {', '.join(o.injury_evidence)}"
            + (f", AAST grade at least {o.aast_grade}" if o.aast_grade else "") for o in injured)
            or "none seen; blood beside an organ is not counted as its injury"))
    return lines


def summary_lines(findings: Findings, algorithm: Algorithm) -> list[str]:
    """Volumes, risk tier and why, the recommendation, the research-use statement.
    Lines starting with '- ' are list items; '' separates paragraphs."""
    rec = findings.recommendation
    return [
        *([incomplete_statement(findings.incomplete), ""] if findings.incomplete else []),
        *volume_lines(findings),
        *finding_lines(findings),
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
