"""Embedded reading: rules over the segmentation, in the fields a VLM reading gives.

The keys match the vision-language backend's JSON (injury_pattern,
organs_involved, bleeding_description, severity_estimate,
differential_diagnosis), so the report and the Q&A treat both alike.
"""

from __future__ import annotations

from typing import Any

from pipeline.findings import TriageResult
from pipeline.grading import risk_tier
from pipeline.quantification import Quantification
from pipeline.settings import PipelineSettings
from pipeline.stages import StageContext

SEVERITY_OF_TIER = {"none": "none", "low": "mild", "moderate": "moderate", "high": "severe"}
# Hamilton et al., Radiographics 2008;28:1603-16: high attenuation in a hematoma.
BLUSH_DIFFERENTIAL = ["active arterial extravasation",
                      "pseudoaneurysm (unchanged on delayed images)",
                      "bone fragment or foreign body (unchanged on delayed images)"]
BLOOD_DIFFERENTIAL = ["hemoperitoneum from solid-organ injury",
                      "mesenteric or bowel injury",
                      "ascites or other simple fluid (0-20 HU, usually lower)"]


def _names(items: list[str]) -> str:
    return ", ".join(i.replace("_", " ") for i in items)


class RulesReading:
    name = "rules-baseline"
    version = "1.0"
    description = "embedded CPU baseline, no model weights: rules over the segmentation and HU"

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings

    def run(self, context: StageContext, triage: TriageResult,
            quantification: Quantification) -> dict[str, Any]:
        hu = self.settings.hu
        blood = quantification.volumes_ml["hemorrhage"]
        blush = quantification.volumes_ml["active_extravasation"]
        components = quantification.components
        found = quantification.compartments
        # Organs with parenchymal evidence only; blood beside an organ is no injury of it.
        organs = [c.organ for c in found if c.parenchymal and c.organ]
        spaces = [c.name for c in found if not c.parenchymal]  # blood inside an organ is no hemoperitoneum
        if blood == 0:
            pattern = "no hemoperitoneum or active extravasation detected"
            description = "No blood-density collection above the minimum size in the peritoneal cavity."
        else:
            parts = [f"hemoperitoneum ({_names(spaces)})"] if spaces else []
            parts += [f"{_names([organ])} intraparenchymal blood" for organ in organs]
            pattern = " and ".join(parts) + (" with a contrast blush" if blush > 0 else "")
            description = (f"About {blood:.0f} mL of blood-density material ({hu.blood_min:g}-{hu.blood_max:g} HU, "
                           f"from {hu.blood_low_min:g} HU in thick collections) "
                           f"in {len(components)} collection(s), by compartment: "
                           + "; ".join(f"{c.name.replace('_', ' ')} {c.volume_ml:.1f} mL"
                                       + (f" (touching the {_names(c.organs_adjacent)})"
                                          if c.organs_adjacent and not c.parenchymal else "")
                                       for c in found) + ".")
            if blush > 0:
                where = _names([c.name for c in found if c.active_extravasation_ml > 0])
                description += f" Contrast-density focus (blush) of {blush:.1f} mL in the {where} compartment."
        tier, _ = risk_tier(quantification, self.settings.risk_tiers)
        differential = (BLUSH_DIFFERENTIAL if blush > 0 else []) + (BLOOD_DIFFERENTIAL if blood > 0 else [])
        return {
            "injury_pattern": pattern,
            "organs_involved": organs,
            "bleeding_description": description,
            "severity_estimate": SEVERITY_OF_TIER[tier],
            "differential_diagnosis": differential or ["no acute finding by this backend"],
            "slices_considered": triage.chosen,
        }
