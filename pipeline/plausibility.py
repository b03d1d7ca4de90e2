"""Can this series be assessed? Checked before any hemorrhage result is made.

A series in which the expected anatomy is not found (no body outline, no liver
or spleen, no aorta although the organs enhance), or whose findings are
physically implausible (blood over a share of the body, more blood than a body
holds), gets no hemorrhage result: the Findings say it was not assessed and
why. Guessing a risk tier for noise or a head CT is a finding the evidence does
not support.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pipeline.anatomy import LIVER, OUTSIDE, SPLEEN, Anatomy
from pipeline.findings import Assessment
from pipeline.settings import PipelineSettings
from pipeline.volume import Volume

if TYPE_CHECKING:
    from pipeline.quantification import Quantification


def assess(volume: Volume, anatomy: Anatomy, quantification: "Quantification",
           settings: PipelineSettings) -> Assessment:
    rules = settings.plausibility
    reasons: list[str] = []
    measured: dict[str, float | bool] = {}

    border = _border_in_body(volume.hu, settings.hu.body_min)
    measured["border_in_body"] = round(border, 3)
    body = anatomy.regions > OUTSIDE
    body_ml = float(np.count_nonzero(body)) * anatomy.voxel_volume_mm3 / 1000.0
    measured["body_ml"] = round(body_ml, 1)
    hu = settings.hu
    fat = float(np.mean((anatomy.hu[body] >= hu.fat_min) & (anatomy.hu[body] <= hu.fat_max))) if body_ml else 0.0
    measured["fat_share_of_body"] = round(fat, 3)
    notes: list[str] = []
    if body_ml == 0:
        reasons.append("no patient found in the images")
    elif border > rules.max_border_in_body and fat < rules.min_fat_share:
        reasons.append(f"no body outline: {border:.0%} of the image border lies inside the body and "
                       f"{fat:.1%} of it is fat (a patient has at least {rules.min_fat_share:.0%}): "
                       "the image is filled edge to edge, not with a patient")
    elif border > rules.max_border_in_body:
        notes.append(f"the field of view cuts the body ({border:.0%} of the image border inside it): "
                     "blood at its edge may be missed")

    liver, spleen = bool(np.any(anatomy.regions == LIVER)), bool(np.any(anatomy.regions == SPLEEN))
    measured.update(liver_found=liver, spleen_found=spleen, aorta_found=anatomy.aorta_hu is not None)
    if body_ml and rules.require_liver_or_spleen and not (liver or spleen):
        reasons.append("neither liver nor spleen found: the series does not show the upper abdomen "
                       "as expected (another body region, or no usable contrast phase)")
    if (liver or spleen) and rules.require_aorta_when_enhanced and anatomy.aorta_hu is None:
        reasons.append("the organs enhance but no aorta was found: contrast reference missing")

    blood_ml = float(quantification.volumes_ml["hemorrhage"])
    measured["blood_candidate_ml"] = round(blood_ml, 1)
    if body_ml and blood_ml > rules.max_blood_ml:
        reasons.append(f"{blood_ml:.0f} mL of blood-density material is more than a body holds "
                       f"(limit {rules.max_blood_ml:g} mL)")
    if body_ml and blood_ml > rules.max_blood_share_of_body * body_ml:
        reasons.append(f"blood-density material fills {blood_ml / body_ml:.0%} of the body in the "
                       f"scanned range (limit {rules.max_blood_share_of_body:.0%})")
    return Assessment(assessed=not reasons, reasons=reasons, measured=measured, notes=notes)


def _border_in_body(hu: np.ndarray, body_min: float) -> float:
    """Share of the image border pixels, over every slice, denser than air."""
    edges = [hu[:, 0, :], hu[:, -1, :], hu[:, 1:-1, 0], hu[:, 1:-1, -1]]
    inside = sum(int(np.count_nonzero(e > body_min)) for e in edges)
    return inside / sum(e.size for e in edges)
