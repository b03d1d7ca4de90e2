"""Embedded report: a template over Findings, in the sections a trauma team reads."""

from __future__ import annotations

from pipeline.findings import RESEARCH_USE, Findings, OrganFinding
from pipeline.rules import ROMAN
from pipeline.settings import PipelineSettings

ORGAN_TITLES = {"liver": "Liver", "spleen": "Spleen", "kidney_right": "Right kidney",
                "kidney_left": "Left kidney", "bowel": "Bowel"}


def _organ_line(finding: OrganFinding) -> str:
    parts = []
    if finding.adjacent_blood_ml:
        parts.append(f"{finding.adjacent_blood_ml:.1f} mL of blood beside it")
    if finding.intraparenchymal_blood_ml:
        parts.append(f"{finding.intraparenchymal_blood_ml:.1f} mL within it "
                     f"(largest {finding.largest_intraparenchymal_mm:.0f} mm)")
    if finding.blush_inside:
        parts.append("contrast blush within the parenchyma")
    if finding.blush_outside_adjacent:
        parts.append("contrast blush in the adjacent collection")
    head = "; ".join(parts) if parts else ("not located" if not finding.located else "no blood detected")
    note = finding.note[:1].upper() + finding.note[1:]
    return f"- {ORGAN_TITLES[finding.organ]}: {head}. {note}."


class TemplateReport:
    name = "template"
    version = "1.0"
    description = "embedded CPU baseline, no model weights: fixed template over Findings"

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings

    def run(self, findings: Findings) -> str:
        f, rec = findings, findings.recommendation
        series = f.series
        lines = [
            "RESEARCH USE ONLY - NOT FOR CLINICAL DECISIONS",
            f"Automated abdominal trauma CT analysis. Backend: {f.provenance.backend_summary}.",
            RESEARCH_USE,
            "",
            "TECHNIQUE",
            f"- CT series {series['series_instance_uid']}: {series['shape'][0]} slices, "
            f"voxel {series['spacing_mm'][2]:.2f} x {series['spacing_mm'][1]:.2f} x "
            f"{series['spacing_mm'][0]:.2f} mm (slice spacing from positions).",
            f"- Hemodynamic status given: {rec.hemodynamic_status}.",
            "",
            "FINDINGS",
            f"- Hemorrhage (all blood, blush included): {f.volumes_ml['hemorrhage']:.1f} mL"
            + (" (" + ", ".join(f"{r.replace('_', ' ')} {v:.1f} mL"
                               for r, v in sorted(f.volumes_by_region_ml.items(), key=lambda t: -t[1])) + ")"
               if f.volumes_by_region_ml else "") + ".",
            f"- Active extravasation: " + (f"present, {f.volumes_ml['active_extravasation']:.1f} mL."
                                           if f.volumes_ml["active_extravasation"] > 0 else "none detected."),
            *[_organ_line(o) for o in f.organs.values()],
            "",
            "AAST GRADE ESTIMATES (lower bounds from the image evidence)",
            *([f"- {ORGAN_TITLES[o.organ]}: at least grade {ROMAN[o.aast_grade]} ({', '.join(o.aast_rules)})."
               for o in f.organs.values() if o.aast_grade is not None]
              or ["- None supported by the evidence this backend measures."]),
            "",
            "IMPRESSION",
            f"- {f.reading['injury_pattern'].capitalize()}.",
            f"- Risk tier: {f.risk_tier.upper()} ({'; '.join(f.risk_tier_reasons)}).",
            "",
            "DECISION SUPPORT (EAST 2012-aligned)",
            *[f"- {a}" for a in rec.actions],
            *[f"- If {status}: {text}" for status, text in rec.branches.items()],
            f"- Rules fired: {', '.join(r.id + (f' [if {r.branch}]' if r.branch else '') for r in rec.rules_fired) or 'none'}.",
            "",
            "LIMITATIONS",
            *(["- HU thresholds and morphology only: lacerations, capsule integrity, bowel and mesenteric",
               "  injury are not assessed; the grades above are lower bounds."]
              if self.settings.backends.segmentation == "hu-baseline" else
              [f"- Segmentation by the {self.settings.backends.segmentation} backend: the volumes depend on "
               "its training; lacerations, capsule integrity, bowel and mesenteric injury are not",
               "  measured; the grades above are lower bounds."]),
            *[f"- {note[:1].upper()}{note[1:]}." for note in f.provenance.notes],
        ]
        return "\n".join(lines) + "\n"
