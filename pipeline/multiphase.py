"""Two phases of one study read together: active bleeding or a contained vascular injury?

On one phase a contrast focus in blood may be either. Across phases they part
ways: extravasated contrast keeps leaking, so the focus grows and changes shape
from an earlier to a later phase (or appears only on the later one), while a
pseudoaneurysm is contained in the vessel wall, keeps its size and enhances and
washes out with the aorta (Uyeda et al., Radiology 2014;270:99-106, and
Boscak et al., Radiology 2013;268:79-88, on splenic injury in arterial and
portal-venous phases: active bleeding grows and changes shape on the later
phase, a contained vascular injury keeps its size and fades with the blood
pool). Pure: the caller passes the Findings of the study's other phases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pipeline.findings import ContrastFocus, Findings
from pipeline.settings import MultiphaseSettings

# Earlier phases first. The phase a series shows comes from the images (Findings.phase).
PHASE_ORDER = ("unenhanced", "arterial", "portal_venous", "delayed")
ACTIVE, CONTAINED, UNDETERMINED = "active_bleeding", "contained_vascular_injury", "undetermined"
SINGLE_PHASE = ("single phase: whether a contrast focus is active bleeding or a contained vascular "
                "injury (pseudoaneurysm) could not be determined; it needs a later phase of the study")


def phase_of(series: Any) -> str | None:
    """The phase the pipeline recognised in a series: a name, or a ContrastPhase (Findings.phase,
    StageContext.phase)."""
    phase = getattr(series, "phase", None)
    name = phase if isinstance(phase, str) else getattr(phase, "name", None)
    return name if name in PHASE_ORDER else None


@dataclass
class Series:
    """What is compared of the series being analysed (its Findings are not made yet)."""

    phase: str | None
    contrast_foci: list[ContrastFocus]
    series: dict[str, Any]  # uids, as Findings.series


def compare(current: Series, others: Sequence[Findings], settings: MultiphaseSettings
            ) -> tuple[dict[int, tuple[str, str]], dict[str, Any]]:
    """Kinds for the current series' foci {id: (kind, evidence)}, and what was compared."""
    mine = phase_of(current)
    candidates = [o for o in others if o.assessment.assessed and phase_of(o) not in (None, mine, "unenhanced")]
    if not current.contrast_foci and not any(o.contrast_foci for o in candidates):
        return {}, {"compared": False, "statement": "no contrast focus in this series"}
    if mine in (None, "unenhanced") or not candidates:
        why = ("the phase of this series was not recognised" if mine is None
               else "this series is unenhanced" if mine == "unenhanced" else "no other phase of the study was analysed")
        return {}, {"compared": False, "statement": f"{SINGLE_PHASE} ({why})"}
    # The nearest other phase, an earlier one preferred: it is the usual pair (arterial, portal).
    other = min(candidates, key=lambda o: (abs(PHASE_ORDER.index(phase_of(o)) - PHASE_ORDER.index(mine)),
                                           PHASE_ORDER.index(phase_of(o)) > PHASE_ORDER.index(mine)))
    theirs = phase_of(other)
    current_is_later = PHASE_ORDER.index(mine) > PHASE_ORDER.index(theirs)
    earlier, later = (other, current) if current_is_later else (current, other)
    names = (phase_of(earlier).replace("_", "-"), phase_of(later).replace("_", "-"))
    pairs = _match(earlier.contrast_foci, later.contrast_foci, settings.match_mm)
    kinds: dict[int, tuple[str, str]] = {}
    faded: list[str] = []
    for e, l in pairs:
        kind, evidence = _classify(e, l, names, settings)
        focus = l if current_is_later else e
        if focus is not None:
            kinds[focus.id] = (kind, evidence)
        elif kind == CONTAINED:  # seen only on the other (earlier) series
            faded.append(evidence)
    same_frame = earlier.series.get("frame_of_reference_uid") == later.series.get("frame_of_reference_uid")
    statement = (f"compared with the {theirs.replace('_', '-')} phase (series {other.series['series_instance_uid']}): "
                 + ("; ".join(f"focus {i}: {k.replace('_', ' ')} ({e})" for i, (k, e) in sorted(kinds.items()))
                    or "no contrast focus in this series")
                 + ("" if same_frame else "; positions compared as acquired (frames of reference differ)"))
    return kinds, {"compared": True, "phases": [mine, theirs], "other_series": other.series["series_instance_uid"],
                   "statement": statement, "faded_foci": faded}


def _match(earlier: list[ContrastFocus], later: list[ContrastFocus], reach_mm: float
           ) -> list[tuple[ContrastFocus | None, ContrastFocus | None]]:
    """Pairs of the same focus on both phases (nearest centroids within reach); the rest alone."""
    pairs, free = [], list(later)
    for e in sorted(earlier, key=lambda f: -f.volume_ml):
        near = [(float(np.linalg.norm(np.subtract(e.centroid_mm, l.centroid_mm))), l) for l in free]
        near = [(d, l) for d, l in near if d <= max(reach_mm, 0.5 * max(e.max_extent_mm, l.max_extent_mm))]
        if near:
            match = min(near, key=lambda t: t[0])[1]
            free.remove(match)
            pairs.append((e, match))
        else:
            pairs.append((e, None))
    return pairs + [(None, l) for l in free]


def _classify(e: ContrastFocus | None, l: ContrastFocus | None, names: tuple[str, str],
              settings: MultiphaseSettings) -> tuple[str, str]:
    first, second = names
    if e is None:
        return ACTIVE, f"not seen on the {first} phase, {l.volume_ml:.1f} mL on the {second} phase"
    if l is None:
        return CONTAINED, (f"{e.volume_ml:.1f} mL on the {first} phase faded with the blood pool on the "
                           f"{second} phase")
    sizes = f"{e.volume_ml:.1f} mL on the {first} phase, {l.volume_ml:.1f} mL on the {second}"
    grew = (l.volume_ml >= settings.growth_ratio * e.volume_ml
            or l.max_extent_mm >= settings.growth_ratio * e.max_extent_mm)
    if grew:
        return ACTIVE, f"grew and changed shape: {sizes}"
    if l.volume_ml * settings.growth_ratio < e.volume_ml:
        return CONTAINED, f"shrank as the blood pool washed out: {sizes}"
    if e.aorta_hu and l.aorta_hu:
        ratios = (e.mean_hu / e.aorta_hu, l.mean_hu / l.aorta_hu)
        follows = abs(ratios[0] - ratios[1]) <= settings.follows_aorta_tolerance
        hu = (f"{e.mean_hu:.0f} HU against an aorta of {e.aorta_hu:.0f}, then {l.mean_hu:.0f} "
              f"against {l.aorta_hu:.0f}")
        if follows:
            return CONTAINED, f"kept its size ({sizes}) and its attenuation followed the aorta ({hu})"
        return ACTIVE, f"kept its size ({sizes}) but pooled against the aorta's washout ({hu})"
    return UNDETERMINED, f"kept its size ({sizes}); no aorta to compare its attenuation with"
