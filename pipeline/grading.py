"""Grading and decision support over the quantified collections (rule table)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from pipeline import rules
from pipeline.findings import OrganFinding, Recommendation, RuleFiring
from pipeline.quantification import Quantification
from pipeline.settings import PipelineSettings, RiskTierSettings
from pipeline.stages import StageContext

ORGANS = ("liver", "spleen", "kidney_right", "kidney_left", "bowel")
TIERS = ("none", "low", "moderate", "high")
NOT_ASSESSED = "not_assessed"  # the tier of a series that could not be assessed (pipeline.plausibility)


@dataclass
class Grading:
    organs: dict[str, OrganFinding]
    risk_tier: str
    risk_tier_reasons: list[str]
    recommendation: Recommendation


def organ_evidence(organ: str, located: bool, quantification: Quantification) -> rules.OrganEvidence:
    """What the compartments show of one organ: inside it (injury) and beside it (adjacency)."""
    own = [c for c in quantification.compartments if c.organ == organ]
    inside = [c for c in own if c.parenchymal]
    beside = [c for c in own if not c.parenchymal]
    return rules.OrganEvidence(
        organ=organ, located=located,
        adjacent_blood_ml=round(sum(c.volume_ml for c in beside), 3),
        intraparenchymal_blood_ml=round(sum(c.volume_ml for c in inside), 3),
        largest_intraparenchymal_mm=max((c.largest_extent_mm for c in inside), default=0.0),
        blush_inside=any(c.active_extravasation_ml > 0 for c in inside),
        blush_outside_adjacent=any(c.active_extravasation_ml > 0 for c in beside),
        vascular_injury=any(c.contained_vascular_injury_ml > 0 for c in inside),
        bleeding_confirmed=any(f.kind == "active_bleeding" and f.compartment in {c.name for c in beside}
                               for f in quantification.contrast_foci))


def spaces_with_blood(quantification: Quantification, min_ml: float) -> list[str]:
    """The peritoneal compartments holding blood (parenchyma is not a space)."""
    return sorted(c.name for c in quantification.compartments
                  if not c.parenchymal and c.volume_ml >= min_ml)


def risk_tier(quantification: Quantification, tiers: RiskTierSettings) -> tuple[str, list[str]]:
    """Tier from volume, spread over compartments, and blush (see RiskTierSettings)."""
    blood = quantification.volumes_ml["hemorrhage"]
    blush = quantification.volumes_ml["active_extravasation"]
    spaces = spaces_with_blood(quantification, tiers.min_space_ml)
    if blood == 0:
        return "none", ["no blood detected"]
    reasons_by_tier: dict[str, list[str]] = {"high": [], "moderate": []}
    contained = quantification.volumes_ml.get("contained_vascular_injury", 0.0)
    if tiers.blush_is_high and blush > 0:
        reasons_by_tier["high"].append(f"active extravasation present ({blush:.1f} mL)")
    if tiers.blush_is_high and contained > 0:
        reasons_by_tier["high"].append(f"contained vascular injury (pseudoaneurysm) present ({contained:.1f} mL)")
    for tier, ml, count in (("high", tiers.high_ml, tiers.high_regions),
                            ("moderate", tiers.moderate_ml, tiers.moderate_regions)):
        if blood >= ml:
            reasons_by_tier[tier].append(f"hemorrhage {blood:.1f} mL >= {ml:g} mL")
        if len(spaces) >= count:
            reasons_by_tier[tier].append(f"blood in {len(spaces)} spaces ({', '.join(spaces)}) >= {count}")
    for tier in ("high", "moderate"):
        if reasons_by_tier[tier]:
            return tier, reasons_by_tier[tier]
    return "low", [f"hemorrhage {blood:.1f} mL < {tiers.moderate_ml:g} mL in {len(spaces)} space(s), "
                   "no active extravasation"]


def recommend(case: rules.CaseEvidence, status: str) -> Recommendation:
    """Rules for the given status; when it is unknown, what each status would mean."""
    fired = rules.decide(case, status)
    firings = [RuleFiring(r.id, r.statement, r.source) for r in fired]
    branches: dict[str, str] = {}
    if status == "unknown" and case.hemorrhage_ml > 0:
        for branch in ("stable", "unstable"):
            branch_rules = rules.decide(case, branch)
            branches[branch] = " ".join(r.statement for r in branch_rules)
            firings += [RuleFiring(r.id, r.statement, r.source, branch)
                        for r in branch_rules if r not in fired]
    actions = [r.statement for r in fired]
    summary = actions[0] if actions else "No rule applies."
    return Recommendation(status, summary, actions, branches, firings)


class RuleTableGrading:
    name = "rule-table"
    version = "1.0"
    description = "AAST 2018 (spleen, liver) and EAST 2012 rule table over the image evidence"

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings

    def run(self, context: StageContext, quantification: Quantification) -> Grading:
        organs = {organ: self._organ(organ, context.anatomy.organ_found(organ), quantification)
                  for organ in ORGANS}
        tiers = self.settings.risk_tiers
        tier, reasons = risk_tier(quantification, tiers)
        amount_tier, _ = risk_tier(quantification, replace(tiers, blush_is_high=False))
        spleen = organs["spleen"]
        case = rules.CaseEvidence(
            hemorrhage_ml=quantification.volumes_ml["hemorrhage"],
            active_extravasation_ml=quantification.volumes_ml["active_extravasation"],
            amount_tier=amount_tier,
            # Splenic injury, or blood in its own space: the amount rule is about splenic injury.
            spleen_involved=spleen.injured or spleen.adjacent_blood_ml > 0,
            contained_vascular_injury_ml=quantification.volumes_ml.get("contained_vascular_injury", 0.0))
        return Grading(organs, tier, reasons, recommend(case, context.hemodynamic_status))

    @staticmethod
    def _organ(organ: str, located: bool, quantification: Quantification) -> OrganFinding:
        evidence = organ_evidence(organ, located, quantification)
        scale = rules.GRADED_ORGANS.get(organ)
        grade, fired = rules.grade(evidence) if scale else (None, [])
        injury = _injury_evidence(evidence)
        touching = [c.name for c in quantification.compartments
                    if not c.parenchymal and organ in c.organs_adjacent]
        if not located:
            note = "organ not located by this backend: no organ-level finding"
        elif grade is not None:
            note = (f"AAST grade at least {rules.ROMAN[grade]} from the image evidence: "
                    + "; ".join(r.statement for r in fired))
        elif injury:
            note = "parenchymal injury: " + "; ".join(injury)
        elif touching:
            note = (f"no parenchymal injury detected; blood in the {_names(touching)} space(s) touches "
                    "it (adjacency, not evidence of injury of this organ)")
        else:
            note = "no blood in or beside the organ detected"
        if located and not scale:
            note += "; its AAST scale is not in the rule table"
        if evidence.blush_outside_adjacent and not injury:
            note += ("; active extravasation in the space beside it, its source not shown by this "
                     "backend")
        return OrganFinding(organ=organ, located=located,
                            adjacent_blood_ml=evidence.adjacent_blood_ml,
                            intraparenchymal_blood_ml=evidence.intraparenchymal_blood_ml,
                            largest_intraparenchymal_mm=evidence.largest_intraparenchymal_mm,
                            blush_inside=evidence.blush_inside,
                            blush_outside_adjacent=evidence.blush_outside_adjacent,
                            aast_grade=grade, aast_scale=scale if grade is not None else None,
                            aast_rules=[r.id for r in fired], note=note,
                            injured=bool(injury), injury_evidence=injury,
                            adjacent_compartments=touching)


def _injury_evidence(evidence: rules.OrganEvidence) -> list[str]:
    """Parenchymal evidence only: blood inside the organ, a blush contained in it."""
    found = []
    if evidence.intraparenchymal_blood_ml > 0:
        found.append(f"intraparenchymal blood {evidence.intraparenchymal_blood_ml:.1f} mL "
                     f"(largest {evidence.largest_intraparenchymal_mm:.0f} mm)")
    if evidence.blush_inside:
        found.append("contrast blush within the parenchyma")
    if evidence.vascular_injury:
        found.append("contained vascular injury (pseudoaneurysm) within the parenchyma")
    return found


def _names(items: list[str]) -> str:
    return ", ".join(i.replace("_", " ") for i in items)
