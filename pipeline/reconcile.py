"""Reading vs segmentation: where a model's reading and the measured volumes disagree.

Both are kept in the Findings; each disagreement is stated (in
``Findings.reconciliation`` and in the provenance notes, which the report
prints), never silently dropped. Only a reading made by a model is compared:
the rules reading is derived from the segmentation itself.

What is compared: blood present or not (the reading's severity and its
bleeding description against the hemorrhage volume), active extravasation
(mentioned, not negated, against the blush volume), the organs involved
(against the organs with blood beside or within them, or a blush), and the
severity against the risk tier. The text checks are simple word rules: a
disagreement they state is a prompt to look, not a verdict.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.findings import OrganFinding

ORGAN_WORDS = (
    ("kidney_right", r"\bright (?:kidney|renal)|\b(?:kidney|renal)\W+right\b"),
    ("kidney_left", r"\bleft (?:kidney|renal)|\b(?:kidney|renal)\W+left\b"),
    ("liver", r"\bliver|\bhepat"),
    ("spleen", r"\bspleen|\bsplen"),
    ("bowel", r"\bbowel|\bintestin|\bcolon|\bmesenter|\bduoden|\bjejun|\bileum"),
)
SEVERITY_OF_TIER = {"none": "none", "low": "mild", "moderate": "moderate", "high": "severe"}
_NEGATED = r"\b(?:no|without|absent|negative for|no evidence of|not)\b[^.;]{0,40}?"
_BLOOD = r"(?:bleed|blood|h(?:a)?emorrhag|h(?:a)?emoperitone|hematoma|haematoma|hemorrhage)"
_BLUSH = r"(?:extravasat|blush|active(?:ly)? bleed|active h(?:a)?emorrhag)"


def reading_organs(names: list[str]) -> list[str]:
    """The reading's organ names as the Findings' organ keys (unsided kidneys: both)."""
    found: list[str] = []
    for raw in names:
        text = raw.lower()
        hits = [organ for organ, pattern in ORGAN_WORDS if re.search(pattern, text)]
        if not hits and re.search(r"\bkidney|\brenal", text):
            hits = ["kidney_right", "kidney_left"]
        found += [h for h in hits if h not in found]
    return found


def _mentions(text: str, pattern: str) -> bool:
    """Mentioned and not negated in the same clause."""
    for clause in re.split(r"[.;\n]", text.lower()):
        if re.search(pattern, clause) and not re.search(_NEGATED + pattern, clause):
            return True
    return False


def mentions_extravasation(text: str) -> bool:
    """The text describes active contrast extravasation (mentioned and not negated)."""
    return _mentions(text, _BLUSH)


def reconcile(reading: dict[str, Any], volumes_ml: dict[str, float], organs: dict[str, OrganFinding],
              risk_tier: str) -> dict[str, Any]:
    if not reading.get("parsed"):
        return {"compared": False, "reason": "the reading is not a model's (or did not parse): "
                                             "nothing independent to compare", "disagreements": []}
    texts = " . ".join([reading.get("injury_pattern", ""), reading.get("bleeding_description", "")])
    severity = reading.get("severity_estimate", "")
    reading_blood = severity != "none" and _mentions(texts, _BLOOD)
    reading_blush = _mentions(texts, _BLUSH)
    named = reading_organs(list(reading.get("organs_involved", [])))
    blood_ml = float(volumes_ml.get("hemorrhage", 0.0))
    blush_ml = float(volumes_ml.get("active_extravasation", 0.0))
    measured = [name for name, o in organs.items()
                if o.adjacent_blood_ml > 0 or o.intraparenchymal_blood_ml > 0 or o.blush_inside
                or o.blush_outside_adjacent]
    disagreements: list[str] = []
    if reading_blood and blood_ml == 0:
        disagreements.append("the reading describes bleeding; the segmentation measured no blood")
    if not reading_blood and blood_ml > 0:
        disagreements.append(f"the segmentation measured {blood_ml:.1f} mL of blood; the reading "
                             f"describes none")
    if reading_blush and blush_ml == 0:
        disagreements.append("the reading describes active extravasation; the segmentation found no blush")
    if not reading_blush and blush_ml > 0:
        disagreements.append(f"the segmentation found {blush_ml:.1f} mL of active extravasation; the "
                             f"reading does not mention it")
    only_reading = [o for o in named if o not in measured]
    only_segmentation = [o for o in measured if o not in named]
    if only_reading:
        disagreements.append("organs named by the reading only: " + ", ".join(only_reading).replace("_", " "))
    if only_segmentation:
        disagreements.append("organs with blood in the segmentation only: "
                             + ", ".join(only_segmentation).replace("_", " "))
    tier_severity = SEVERITY_OF_TIER.get(risk_tier, risk_tier)
    if severity and severity != tier_severity:
        disagreements.append(f"the reading's severity is {severity}; the measured risk tier is "
                             f"{risk_tier} ({tier_severity})")
    return {
        "compared": True,
        "agree": not disagreements,
        "disagreements": disagreements,
        "reading": {"bleeding": reading_blood, "active_extravasation": reading_blush,
                    "organs": named, "severity": severity},
        "segmentation": {"hemorrhage_ml": blood_ml, "active_extravasation_ml": blush_ml,
                         "organs": measured, "risk_tier": risk_tier},
    }
