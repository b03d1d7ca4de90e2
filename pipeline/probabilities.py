"""Per-target probabilities in the RSNA 2023 form, from what the pipeline found.

Targets: bowel and extravasation (healthy / injury), kidney, liver and spleen (healthy /
low / high; RSNA's low is about AAST I-III, high IV-V), and any_injury. Every backend
ends in the same organ findings (injury evidence, AAST lower bound, blood beside the
organ, blush), so one mapping serves them all. It is NOT calibrated: a fixed table from
the evidence to probabilities, marked so in the Findings; `trauma-node evaluate`
measures it on a site's studies (log loss, reliability diagram). A series that could
not be assessed gets the priors, said so, not a guess.
"""

from __future__ import annotations

from typing import Any

from pipeline.findings import OrganFinding

METHOD = "evidence table v1 (uncalibrated)"
# Approximate prevalences in the RSNA 2023 training set (3,147 patients).
PRIORS: dict[str, dict[str, float]] = {
    "bowel": {"healthy": 0.98, "injury": 0.02},
    "extravasation": {"healthy": 0.936, "injury": 0.064},
    "kidney": {"healthy": 0.945, "low": 0.037, "high": 0.018},
    "liver": {"healthy": 0.894, "low": 0.091, "high": 0.015},
    "spleen": {"healthy": 0.889, "low": 0.058, "high": 0.053},
}
# (healthy, low, high) of a three-level organ, by the strongest evidence about it.
ORGAN_TABLE = {
    "injured, AAST IV-V": (0.10, 0.25, 0.65),
    "injured": (0.15, 0.60, 0.25),
    "blood beside it": (0.70, 0.20, 0.10),
    "blood elsewhere": (0.90, 0.07, 0.03),
    "no blood": (0.97, 0.02, 0.01),
}
HIGH_GRADE = 4


def _organ(found: OrganFinding | None, blood_ml: float) -> tuple[str, tuple[float, float, float]]:
    if found is None or not found.located:
        return "not located: prior", ()
    if found.injured or found.aast_grade:  # a grade is evidence too: a blush beside it, say
        key = "injured, AAST IV-V" if (found.aast_grade or 0) >= HIGH_GRADE else "injured"
    elif found.adjacent_blood_ml > 0:
        key = "blood beside it"
    else:
        key = "blood elsewhere" if blood_ml > 0 else "no blood"
    return key, ORGAN_TABLE[key]


def probabilities(organs: dict[str, OrganFinding], volumes_ml: dict[str, float],
                  by_region_ml: dict[str, float], reading: dict[str, Any], assessed: bool
                  ) -> dict[str, Any]:
    """{"method", "assessed", "targets": {target: {level: p}}, "any_injury": p, "evidence"}."""
    targets = {name: dict(levels) for name, levels in PRIORS.items()}
    evidence: dict[str, str] = {name: "not assessed: prior" for name in targets}
    if assessed:
        blood = volumes_ml.get("hemorrhage", 0.0)
        for name in ("liver", "spleen"):
            evidence[name], table = _organ(organs.get(name), blood)
            if table:
                targets[name] = dict(zip(("healthy", "low", "high"), table))
        kidneys = [_organ(organs.get(side), blood) for side in ("kidney_right", "kidney_left")]
        located = [k for k in kidneys if k[1]]
        if located:
            key, table = min(located, key=lambda k: k[1][0])  # the less healthy kidney
            evidence["kidney"], targets["kidney"] = key, dict(zip(("healthy", "low", "high"), table))
        else:
            evidence["kidney"] = "not located: prior"
        active = volumes_ml.get("active_extravasation", 0.0)
        contained = volumes_ml.get("contained_vascular_injury", 0.0)
        p, evidence["extravasation"] = (
            (0.85, "active extravasation") if active > 0 else
            (0.50, "contained vascular injury only") if contained > 0 else
            (0.10, "blood, no blush") if blood > 0 else (0.02, "no blood"))
        targets["extravasation"] = {"healthy": 1 - p, "injury": p}
        bowel = organs.get("bowel")
        named = any("bowel" in str(o).lower() for o in reading.get("organs_involved") or [])
        p, evidence["bowel"] = (
            (0.60, "bowel injury evidence") if bowel is not None and bowel.injured else
            (0.40, "the reading names the bowel") if named else
            # Blood between the loops (the central, mesenteric space): a sign of bowel or
            # mesenteric injury, though not specific.
            (0.15, "blood in the mesenteric space") if by_region_ml.get("central", 0.0) > 0 else
            (0.02, "bowel not assessed by this evidence: prior"))
        targets["bowel"] = {"healthy": 1 - p, "injury": p}
    rounded = {name: {level: round(float(p), 4) for level, p in levels.items()}
               for name, levels in targets.items()}
    return {
        "method": METHOD, "assessed": assessed, "targets": rounded,
        # As the RSNA metric derives it: the largest chance of any target not being healthy.
        "any_injury": round(max(1 - levels["healthy"] for levels in rounded.values()), 4),
        "evidence": evidence,
    }
