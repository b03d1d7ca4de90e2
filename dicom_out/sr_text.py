"""The SR's TEXT content: impression, recommendation, report, research-use notice."""

from __future__ import annotations

from dicom_out.device import RESEARCH_USE, Algorithm
from pipeline.findings import Findings, incomplete_statement

TAG = f"[{RESEARCH_USE} - AI-generated] "  # leads every text a viewer may show on its own


def impression(findings: Findings) -> str:
    preliminary = f"{incomplete_statement(findings.incomplete)} " if findings.incomplete else ""
    return TAG + preliminary + _impression(findings)


def _impression(findings: Findings) -> str:
    if not findings.assessment.assessed:
        return (f"NOT ASSESSED: this series could not be assessed, so no hemorrhage result and "
                f"no risk tier are given. Why: {'; '.join(findings.assessment.reasons)}.")
    pattern = str(findings.reading.get("injury_pattern") or "no intra-abdominal blood detected")
    volumes = findings.volumes_ml
    reasons = "; ".join(findings.risk_tier_reasons)
    return (f"{pattern[:1].upper()}{pattern[1:]}. "
            f"Hemorrhage {volumes.get('hemorrhage', 0.0):.1f} mL, active extravasation "
            f"{volumes.get('active_extravasation', 0.0):.1f} mL. "
            f"Risk tier: {findings.risk_tier.upper()}" + (f" ({reasons})." if reasons else "."))


def recommendation(findings: Findings) -> str:
    """The EAST-aligned decision support, with the rules that fired and their sources."""
    rec = findings.recommendation
    lines = [f"{TAG}Decision support (EAST-aligned); hemodynamic status: {rec.hemodynamic_status}.",
             rec.summary]
    lines += [f"- {action}" for action in rec.actions if action != rec.summary]
    lines += [f"If {status}: {text}" for status, text in rec.branches.items()]
    lines += [f"Rule {r.id}" + (f" [if {r.branch}]" if r.branch else "") + f": {r.source}"
              for r in rec.rules_fired]
    return "\n".join(lines)


def report(findings: Findings, algorithm: Algorithm) -> str:
    """The pipeline's report; the notice is added when a report backend left it out."""
    text = findings.report.strip()
    return text if RESEARCH_USE in text.upper() else f"{algorithm.notice()}\n\n{text}"


def comparison(findings: Findings) -> list[str]:
    """The comparison with the prior study, when one was looked for (Findings.interval)."""
    statement = findings.interval.get("statement")
    return [TAG + statement] if statement else []
