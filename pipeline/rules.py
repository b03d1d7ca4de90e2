"""The rule table: AAST 2018 grade estimates and EAST-aligned decision support.

Each rule names its source and the image evidence it needs; nothing here
grades more than the evidence allows. A grade is a lower bound: the embedded
baseline measures blood and blush, not laceration depth or capsule integrity.
See ../shared/REFERENCES.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

AAST_SPLEEN = "AAST Organ Injury Scale 2018, spleen (Kozar et al., J Trauma Acute Care Surg 2018;85:1119-22)"
AAST_LIVER = "AAST Organ Injury Scale 2018, liver (Kozar et al., J Trauma Acute Care Surg 2018;85:1119-22)"
EAST_2012 = ("EAST practice management guidelines, non-operative management of blunt hepatic and "
             "splenic injury (Stassen et al., J Trauma Acute Care Surg 2012;73:S288-S300)")
ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V"}  # AAST grades are written in Roman numerals


@dataclass(frozen=True)
class OrganEvidence:
    organ: str
    located: bool
    adjacent_blood_ml: float
    intraparenchymal_blood_ml: float
    largest_intraparenchymal_mm: float
    blush_inside: bool
    blush_outside_adjacent: bool  # a blush in the space named after the organ
    # A contrast focus inside it that kept its size and followed the vessels across the
    # study's phases (pipeline.multiphase): a pseudoaneurysm, AAST's "vascular injury".
    vascular_injury: bool = False
    # The blush beside it was seen growing across the study's phases (pipeline.multiphase):
    # active bleeding, not a vascular injury.
    bleeding_confirmed: bool = False

    @property
    def parenchymal(self) -> bool:
        """Evidence inside the organ: a blush beside it alone does not show its source."""
        return self.intraparenchymal_blood_ml > 0 or self.blush_inside or self.vascular_injury


@dataclass(frozen=True)
class GradeRule:
    id: str
    organ: str
    grade: int
    statement: str
    source: str
    applies: Callable[[OrganEvidence], bool]


GRADE_RULES: tuple[GradeRule, ...] = (
    GradeRule("AAST-SPLEEN-V-BLEED-BEYOND", "spleen", 5,
              "active bleeding extending beyond the spleen into the peritoneum", AAST_SPLEEN,
              lambda e: e.blush_outside_adjacent and e.parenchymal and e.bleeding_confirmed),
    # On one phase a blush beyond the organ is active bleeding (V) or a vascular injury (IV):
    # the lower bound is the lesser, until another phase tells them apart.
    GradeRule("AAST-SPLEEN-IV-BLUSH-BEYOND-ONE-PHASE", "spleen", 4,
              "contrast blush beyond the spleen on one phase: active bleeding (grade V) or a splenic "
              "vascular injury (grade IV), not told apart", AAST_SPLEEN,
              lambda e: e.blush_outside_adjacent and e.parenchymal and not e.bleeding_confirmed),
    GradeRule("AAST-SPLEEN-IV-VASCULAR-INJURY", "spleen", 4,
              "splenic vascular injury (pseudoaneurysm: contained, following the vessels across phases)",
              AAST_SPLEEN, lambda e: e.vascular_injury),
    GradeRule("AAST-SPLEEN-IV-BLEED-CONTAINED", "spleen", 4,
              "active bleeding confined within the splenic capsule", AAST_SPLEEN,
              lambda e: e.blush_inside),
    GradeRule("AAST-SPLEEN-III-HEMATOMA-5CM", "spleen", 3,
              "intraparenchymal hematoma >= 5 cm", AAST_SPLEEN,
              lambda e: e.largest_intraparenchymal_mm >= 50),
    GradeRule("AAST-SPLEEN-II-HEMATOMA", "spleen", 2,
              "intraparenchymal hematoma < 5 cm", AAST_SPLEEN,
              lambda e: 0 < e.largest_intraparenchymal_mm < 50),
    GradeRule("AAST-LIVER-IV-BLEED-BEYOND", "liver", 4,
              "active bleeding extending beyond the liver parenchyma into the peritoneum", AAST_LIVER,
              lambda e: e.blush_outside_adjacent and e.parenchymal and e.bleeding_confirmed),
    GradeRule("AAST-LIVER-III-BLUSH-BEYOND-ONE-PHASE", "liver", 3,
              "contrast blush beyond the liver on one phase: active bleeding (grade IV) or a liver "
              "vascular injury (grade III), not told apart", AAST_LIVER,
              lambda e: e.blush_outside_adjacent and e.parenchymal and not e.bleeding_confirmed),
    GradeRule("AAST-LIVER-III-VASCULAR-INJURY", "liver", 3,
              "liver vascular injury (pseudoaneurysm: contained, following the vessels across phases)",
              AAST_LIVER, lambda e: e.vascular_injury),
    GradeRule("AAST-LIVER-III-BLEED-CONTAINED", "liver", 3,
              "active bleeding contained within the liver parenchyma", AAST_LIVER,
              lambda e: e.blush_inside),
    GradeRule("AAST-LIVER-III-HEMATOMA-10CM", "liver", 3,
              "intraparenchymal hematoma > 10 cm", AAST_LIVER,
              lambda e: e.largest_intraparenchymal_mm > 100),
    GradeRule("AAST-LIVER-II-HEMATOMA", "liver", 2,
              "intraparenchymal hematoma <= 10 cm", AAST_LIVER,
              lambda e: 0 < e.largest_intraparenchymal_mm <= 100),
)
GRADED_ORGANS = {"spleen": AAST_SPLEEN, "liver": AAST_LIVER}


@dataclass(frozen=True)
class CaseEvidence:
    hemorrhage_ml: float
    active_extravasation_ml: float
    amount_tier: str  # risk tier from volume and spread alone, the blush left out
    spleen_involved: bool
    contained_vascular_injury_ml: float = 0.0  # foci found contained across phases


@dataclass(frozen=True)
class DecisionRule:
    id: str
    statuses: tuple[str, ...]  # hemodynamic statuses the rule is for
    statement: str
    source: str
    applies: Callable[[CaseEvidence], bool]


ALL = ("stable", "unstable", "unknown")
DECISION_RULES: tuple[DecisionRule, ...] = (
    DecisionRule("NO-BLOOD-DETECTED", ALL,
                 "No hemoperitoneum or active extravasation detected by this backend. This does not "
                 "exclude injury (bowel, mesentery, pancreas, diaphragm, small parenchymal tears): "
                 "radiologist review of the whole series.", "pipeline scope statement",
                 lambda c: c.hemorrhage_ml == 0),
    DecisionRule("STATUS-UNKNOWN", ("unknown",),
                 "Hemodynamic status not given: the management depends on it (see the branches).",
                 "pipeline policy: never stronger than the evidence",
                 lambda c: c.hemorrhage_ml > 0),
    DecisionRule("EAST-UNSTABLE-OPERATIVE", ("unstable",),
                 "Haemodynamically unstable with intra-abdominal hemorrhage: operative management "
                 "(laparotomy); imaging must not delay it.", EAST_2012,
                 lambda c: c.hemorrhage_ml > 0),
    DecisionRule("EAST-STABLE-NONOPERATIVE", ("stable",),
                 "Haemodynamically stable: non-operative management (serial examination, "
                 "haemoglobin monitoring) is the treatment of choice.", EAST_2012,
                 lambda c: c.hemorrhage_ml > 0),
    DecisionRule("EAST-STABLE-BLUSH-ANGIOGRAPHY", ("stable",),
                 "Contrast blush in a stable patient: consider angiography with embolisation.",
                 EAST_2012, lambda c: c.active_extravasation_ml > 0),
    # EAST 2012 counts a pseudoaneurysm among the blushes that prompt angiography.
    DecisionRule("EAST-STABLE-VASCULAR-INJURY-ANGIOGRAPHY", ("stable",),
                 "Contained vascular injury (pseudoaneurysm) in a stable patient: consider angiography "
                 "with embolisation; it may rupture later even while the patient is stable.",
                 EAST_2012, lambda c: c.contained_vascular_injury_ml > 0),
    DecisionRule("EAST-HEMOPERITONEUM-AMOUNT", ("stable", "unknown"),
                 "A moderate or large hemoperitoneum with a splenic injury or blood in the perisplenic "
                 "space (a splenic injury may be there that this backend cannot see): in stable splenic "
                 "injury the amount predicts the need for intervention, a higher risk of failed "
                 "non-operative management; the surgical team should be aware.", EAST_2012,
                 lambda c: c.spleen_involved and c.amount_tier in ("moderate", "high")),
)


# Not a rule of the table: what a series that could not be assessed gets instead of any.
NOT_ASSESSED_ID = "NOT-ASSESSED"
NOT_ASSESSED_STATEMENT = ("The series could not be assessed by this backend (see the reasons): no "
                          "hemorrhage result and no risk tier are given. Radiologist review of the "
                          "whole series.")
NOT_ASSESSED_SOURCE = "pipeline policy: no finding without evidence (pipeline/plausibility.py)"


def grade(evidence: OrganEvidence) -> tuple[int | None, list[GradeRule]]:
    """Highest grade the evidence supports (a lower bound), and the rules that fired."""
    fired = [r for r in GRADE_RULES if r.organ == evidence.organ and r.applies(evidence)]
    return (max(r.grade for r in fired) if fired else None), fired


def decide(case: CaseEvidence, status: str) -> list[DecisionRule]:
    return [r for r in DECISION_RULES if status in r.statuses and r.applies(case)]
