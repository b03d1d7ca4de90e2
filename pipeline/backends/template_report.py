"""Embedded report: a template over Findings, in the sections a trauma team reads."""

from __future__ import annotations

from pipeline.findings import RESEARCH_USE, Findings, OrganFinding, incomplete_statement
from pipeline.rules import ROMAN
from pipeline.settings import PipelineSettings

ORGAN_TITLES = {"liver": "Liver", "spleen": "Spleen", "kidney_right": "Right kidney",
                "kidney_left": "Left kidney", "bowel": "Bowel"}


def _organ_line(finding: OrganFinding) -> str:
    """Injury only on parenchymal evidence; the note says what touches the organ otherwise."""
    note = finding.note[:1].upper() + finding.note[1:]
    if finding.injured:
        return (f"- {ORGAN_TITLES[finding.organ]}: INJURY (parenchymal evidence): "
                f"{'; '.join(finding.injury_evidence)}. {note}.")
    head = "not located. " if not finding.located else ""
    return f"- {ORGAN_TITLES[finding.organ]}: {head}{note}."


def _foci_lines(findings: Findings) -> list[str]:
    """Each contrast focus with its kind, and whether the study's phases could tell it."""
    if not findings.contrast_foci:
        return []
    lines = ["- Contrast foci (blushes):"]
    for focus in findings.contrast_foci:
        kind = {"active_bleeding": "ACTIVE BLEEDING", "contained_vascular_injury":
                "CONTAINED VASCULAR INJURY (pseudoaneurysm)"}.get(focus.kind, "active bleeding or contained "
                                                                 "vascular injury: not determined")
        lines.append(f"  - focus {focus.id}, {focus.compartment.replace('_', ' ')}: {focus.volume_ml:.1f} mL, "
                     f"{focus.mean_hu:.0f} HU" + (f" (aorta {focus.aorta_hu:.0f} HU)" if focus.aorta_hu else "")
                     + f"; {kind}" + (f": {focus.evidence}" if focus.evidence else "") + ".")
    statement = findings.multiphase.get("statement")
    if statement:
        lines.append(f"  - Phases: {statement}.")
    lines += [f"  - Faded on the later phase: {text}: contained vascular injury (pseudoaneurysm)."
              for text in findings.multiphase.get("faded_foci", [])]
    return lines


def _phase_line(findings: Findings) -> str:
    """The phase read from the images (pipeline.phase), with what showed it."""
    phase = findings.phase
    name = phase.name.replace("_", "-")
    return (f"- Contrast phase, read from the images (not the series description): {name}"
            + (f" ({'; '.join(phase.evidence)})" if phase.evidence else "") + ".")


def _compartment_lines(findings: Findings) -> list[str]:
    """Each mL of blood once, in the compartment it lies in, with the organs it touches."""
    lines = []
    for c in findings.compartments:
        where = c.name.replace("_", " ")
        text = f"  - {where}: {c.volume_ml:.1f} mL"
        if c.active_extravasation_ml > 0:
            text += f", active extravasation {c.active_extravasation_ml:.1f} mL"
        if c.organs_adjacent and not c.parenchymal:
            text += " (touching the " + ", ".join(ORGAN_TITLES.get(o, o).lower() for o in c.organs_adjacent) + ")"
        lines.append(text + ".")
    return lines


class TemplateReport:
    name = "template"
    version = "1.0"
    description = "embedded CPU baseline, no model weights: fixed template over Findings"

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings

    def run(self, findings: Findings) -> str:
        f, rec, hu = findings, findings.recommendation, self.settings.hu
        series = f.series
        head = [
            "RESEARCH USE ONLY - NOT FOR CLINICAL DECISIONS",
            f"Automated abdominal trauma CT analysis. Backend: {f.provenance.backend_summary}.",
            RESEARCH_USE,
            "",
            *(["SERIES MAY BE INCOMPLETE",
               f"- {incomplete_statement(f.incomplete)}", ""] if f.incomplete else []),
            "TECHNIQUE",
            f"- CT series {series['series_instance_uid']}: {series['shape'][0]} slices, "
            f"voxel {series['spacing_mm'][2]:.2f} x {series['spacing_mm'][1]:.2f} x "
            f"{series['spacing_mm'][0]:.2f} mm (slice spacing from positions).",
            f"- Hemodynamic status given: {rec.hemodynamic_status}.",
            _phase_line(f),
            "",
        ]
        if not f.assessment.assessed:
            return "\n".join(head + [
                "NOT ASSESSED",
                "- This series could not be assessed: no hemorrhage result and no risk tier are given.",
                *[f"- {reason[:1].upper()}{reason[1:]}." for reason in f.assessment.reasons],
                "",
                "IMPRESSION",
                "- Not assessed. Risk tier: NOT ASSESSED.",
                f"- {rec.summary}",
            ]) + "\n"
        lines = head + [
            "FINDINGS",
            f"- Hemorrhage, total: {f.volumes_ml['hemorrhage']:.1f} mL = non-enhancing "
            f"{f.volumes_ml.get('non_enhancing_hemorrhage', 0.0):.1f} mL + active extravasation "
            f"{f.volumes_ml['active_extravasation']:.1f} mL"
            + (f" + contained vascular injury {f.volumes_ml['contained_vascular_injury']:.1f} mL"
               if f.volumes_ml.get("contained_vascular_injury") else "") + ".",
            f"- Active extravasation: " + (f"present, {f.volumes_ml['active_extravasation']:.1f} mL."
                                           if f.volumes_ml["active_extravasation"] > 0 else "none detected."),
            *_foci_lines(f),
            *(["- By compartment (each mL counted once):", *_compartment_lines(f)] if f.compartments else []),
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
               "  injury are not assessed; the grades above are lower bounds.",
               f"- Blood of {hu.blood_low_min:g}-{hu.blood_min:g} HU (unclotted or diluted) counts only in thick "
               f"collections, under {hu.blood_low_min:g} HU not at all:",
               "  very low attenuation blood can be confused with ascites, urine or fluid-filled bowel.",
               "- Contrast continuous with bowel gas is taken for oral contrast, and on the delayed phase contrast",
               "  in or against a kidney or in the bladder for excreted contrast (a urine leak looks the same)."]
              if self.settings.backends.segmentation == "hu-baseline" else
              [f"- Segmentation by the {self.settings.backends.segmentation} backend: the volumes depend on "
               "its training; lacerations, capsule integrity, bowel and mesenteric injury are not",
               "  measured; the grades above are lower bounds."]),
            *[f"- {note[:1].upper()}{note[1:]}." for note in f.provenance.notes],
        ]
        return "\n".join(lines) + "\n"
