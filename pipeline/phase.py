"""The contrast phase of a series, recognised from the images themselves.

The series description is not trusted (it is free text, and a study may hold
several phases): the phase is read from what enhances, on the anatomy's
working grid.

- unenhanced: no enhancing aorta, liver, spleen or kidney.
- delayed (excretory): contrast excreted into a renal collecting system, or
  layering in the bladder, denser than the blood pool: the excretory phase
  begins about 3-5 minutes after injection (Yuh & Cohan, AJR 1999;173:747-55).
- arterial: the renal cortex far brighter than the medulla (corticomedullary
  differentiation: 110-140 HU in the corticomedullary phase, under 30 HU by the
  nephrographic phase, Eur J Radiol 2007;63:420-6), or the portal vein lagging
  far behind the aorta, or, with neither to measure, a very dense aorta (the
  arterial peak; Bae, Radiology 2010;256:32-61, enhancement against time).
- portal-venous: enhancing organs and none of the above (homogeneous kidneys,
  the portal vein close to the aorta).
- undetermined: the organs enhance but no aorta was found.

Excreted contrast is also returned as a mask: on the delayed phase it is what
the blush rule must not take for extravasation.
"""

from __future__ import annotations

import numpy as np

from pipeline import morphology
from pipeline.anatomy import (AORTA, KIDNEY_LEFT, KIDNEY_RIGHT, LIVER, OUTSIDE, SOLID_CODES, SPLEEN,
                              Anatomy, fill_holes_2d, label_in_box)
from pipeline.findings import ContrastPhase
from pipeline.settings import PipelineSettings
from pipeline.volume import Volume

UNENHANCED, ARTERIAL, PORTAL_VENOUS, DELAYED, UNDETERMINED = (
    "unenhanced", "arterial", "portal_venous", "delayed", "undetermined")
KIDNEYS = (KIDNEY_RIGHT, KIDNEY_LEFT)
CORTICOMEDULLARY_HU = 40.0  # cortex minus medulla: between <30 (nephrographic) and 110-140 (corticomedullary)
PORTAL_LAG_HU = 80.0  # aorta minus portal vein beyond this: the portal vein is still filling
ARTERIAL_AORTA_HU = 250.0  # with no kidney or portal vein to read: an arterial peak
# Excreted contrast is concentrated in urine, far above the blood pool and the renal cortex.
EXCRETED_MIN_HU = 250.0
EXCRETED_ABOVE_HU = 100.0
EXCRETED_MIN_ML = 0.3
PORTAL_MIN_HU = 100.0  # an enhanced portal vein, above unenhanced blood and soft tissue
PORTAL_MIN_ML = 2.0
MEDULLA_MIN_HU = 20.0  # renal sinus fat and urine are not medulla


def recognise(volume: Volume, anatomy: Anatomy, settings: PipelineSettings
              ) -> tuple[ContrastPhase, np.ndarray | None]:
    """The phase with its evidence, and the excreted contrast (working grid; None when none)."""
    hu, regions = anatomy.hu, anatomy.regions
    cortex, medulla = _kidney_layers(hu, regions)
    portal = _portal_vein(anatomy, settings)
    excreted, where = _excreted(volume, anatomy, excretion_level(anatomy.aorta_hu, portal, cortex))
    measured = {"aorta_hu": anatomy.aorta_hu, "portal_vein_hu": portal,
                "liver_hu": _median(hu, regions == LIVER), "spleen_hu": _median(hu, regions == SPLEEN),
                "kidney_cortex_hu": cortex, "kidney_medulla_hu": medulla,
                "excreted_contrast": where}
    measured = {k: round(float(v), 1) if isinstance(v, (float, np.floating)) else v for k, v in measured.items()}
    name, evidence = _decide(anatomy, measured)
    return ContrastPhase(name, evidence, measured), excreted if name == DELAYED else None


def excretion_level(*blood_pool_and_cortex: float | None) -> float:
    """The HU above which contrast is excreted: concentrated in urine, far above the blood
    pool (aorta, portal vein) and the enhancing renal cortex."""
    return max([EXCRETED_MIN_HU] + [hu + EXCRETED_ABOVE_HU for hu in blood_pool_and_cortex if hu is not None])


def _decide(anatomy: Anatomy, m: dict) -> tuple[str, list[str]]:
    aorta, portal, cortex, medulla = m["aorta_hu"], m["portal_vein_hu"], m["kidney_cortex_hu"], m["kidney_medulla_hu"]
    organs = [o for o in ("liver", "spleen", "kidney_right", "kidney_left") if anatomy.organ_found(o)]
    if aorta is None:
        if not organs:
            return UNENHANCED, ["no enhancing aorta, liver, spleen or kidney"]
        return UNDETERMINED, [f"enhancing {', '.join(o.replace('_', ' ') for o in organs)} but no aorta found"]
    evidence = [f"aorta {aorta:.0f} HU"]
    if m["excreted_contrast"]:
        return DELAYED, evidence + [f"excreted contrast in the {' and '.join(m['excreted_contrast'])}"]
    differentiated = cortex is not None and medulla is not None and cortex - medulla >= CORTICOMEDULLARY_HU
    lagging = portal is not None and aorta - portal >= PORTAL_LAG_HU
    if cortex is not None and medulla is not None:
        evidence.append(f"renal cortex {cortex:.0f} HU, medulla {medulla:.0f} HU"
                        + (" (corticomedullary differentiation)" if differentiated else " (homogeneous)"))
    if portal is not None:
        evidence.append(f"portal vein {portal:.0f} HU" + (" (still filling)" if lagging else ""))
    if differentiated or lagging or (cortex is None or medulla is None) and portal is None and aorta >= ARTERIAL_AORTA_HU:
        return ARTERIAL, evidence
    if anatomy.organ_found("liver") or anatomy.organ_found("spleen"):
        liver_spleen = [f"{o} {m[o + '_hu']:.0f} HU" for o in ("liver", "spleen") if m[o + "_hu"] is not None]
        return PORTAL_VENOUS, evidence + [", ".join(liver_spleen) + " enhanced"]
    return UNDETERMINED, evidence + ["no liver or spleen to read the venous phase from"]


def _median(hu: np.ndarray, mask: np.ndarray) -> float | None:
    return float(np.median(hu[mask])) if mask.any() else None


def _kidney_layers(hu: np.ndarray, regions: np.ndarray) -> tuple[float | None, float | None]:
    """Median HU of the renal cortex (1-3 working pixels in from the outline) and of the
    medulla (4 or more in), the outer pixel left out (partial volume with the fat)."""
    kidney = np.isin(regions, KIDNEYS)
    if not kidney.any():
        return None, None
    cortex = morphology.erode(kidney, morphology.in_plane(1)) & ~morphology.erode(kidney, morphology.in_plane(3))
    core = morphology.erode(kidney, morphology.in_plane(4))
    medulla = core & (hu >= MEDULLA_MIN_HU)
    return _median(hu, cortex), _median(hu, medulla)


def _portal_vein(anatomy: Anatomy, settings: PipelineSettings) -> float | None:
    """Median HU of the largest enhancing tube outside the organs that enters the liver
    across the slices (the portal vein runs obliquely to the hilum; the IVC runs along z)."""
    regions, hu = anatomy.regions, anatomy.hu
    liver = regions == LIVER
    if not liver.any():
        return None
    tube = (anatomy.cavity() & ~np.isin(regions, SOLID_CODES) & (hu >= PORTAL_MIN_HU)
            & (hu < settings.hu.bone_min))
    labels, count, boxes, voxels = label_in_box(morphology.open_(tube, morphology.in_plane(1)))
    if not count:
        return None
    sizes = voxels * anatomy.voxel_volume_mm3 / 1000.0
    extent = lambda n: [(s.stop - s.start) * d for s, d in zip(boxes[n - 1], anatomy.spacing)]  # noqa: E731
    touching = np.unique(labels[morphology.dilate(liver, (3, 3, 3))])
    keep = [n for n in touching if n and sizes[n] >= PORTAL_MIN_ML and max(extent(n)[1:]) >= extent(n)[0]]
    if not keep:
        return None
    return _median(hu, labels == max(keep, key=lambda n: sizes[n]))


def _excreted(volume: Volume, anatomy: Anatomy, dense_min: float) -> tuple[np.ndarray | None, list[str]]:
    """Contrast denser than dense_min in a renal collecting system (a dense focus lying mostly
    in a kidney's outline) or layering in the bladder (below the solid organs, urine on its
    anterior side)."""
    hu, regions = anatomy.hu, anatomy.regions
    voxel_ml = anatomy.voxel_volume_mm3 / 1000.0
    # Excreted contrast can be as dense as bone (coded as bone): the body, not only the cavity.
    dense = (regions > OUTSIDE) & (regions != AORTA) & (hu >= dense_min)
    labels, count, boxes, sizes = label_in_box(dense)
    if not count:
        return None, []
    kidney = fill_holes_2d(np.isin(regions, KIDNEYS))
    solid_slices = np.flatnonzero(np.isin(regions, SOLID_CODES).any(axis=(1, 2)))
    pelvis_from = int(solid_slices[-1]) + 1 if solid_slices.size else len(hu)
    cavity = anatomy.cavity()
    found, where = np.zeros(hu.shape, dtype=bool), []
    for index, box in enumerate(boxes, start=1):
        if sizes[index] * voxel_ml < EXCRETED_MIN_ML:
            continue
        comp = labels[box] == index
        if (kidney[box] & comp).sum() >= 0.25 * comp.sum():
            found[box] |= comp
            where.append("renal collecting system")
        elif box[0].start >= pelvis_from and cavity[box][comp].all() and _urine_above(volume, anatomy, box, comp):
            found[box] |= comp
            where.append("bladder")
    return (found if found.any() else None), sorted(set(where))


def _urine_above(volume: Volume, anatomy: Anatomy, box: tuple[slice, ...], comp: np.ndarray) -> bool:
    """Urine (0-25 HU) lies against the focus on its anterior side and not behind it:
    contrast layering under urine, not a contrast-filled loop in fluid."""
    grown = morphology.grow_box(box, (1, 5, 5), anatomy.hu.shape)
    inner = np.zeros(tuple(s.stop - s.start for s in grown), dtype=bool)
    inner[tuple(slice(a.start - g.start, a.stop - g.start) for a, g in zip(box, grown))] = comp
    hu = anatomy.hu[grown]
    # A ring 2-4 working pixels out: nearer ones are the focus's own blur.
    ring = morphology.dilate(inner, (1, 9, 9)) & ~morphology.dilate(inner, (1, 5, 5))
    urine = ring & (hu >= 0) & (hu <= 25)
    # Patient y (LPS: +y posterior) of each voxel, up to a constant.
    k, i, j = np.indices(inner.shape, dtype=np.float32)
    dz, dy, dx = anatomy.spacing
    y = i * dy * volume.column_direction[1] + j * dx * volume.row_direction[1] - k * dz * volume.normal[1]
    centre = float(y[inner].mean())
    anterior, posterior = int((urine & (y < centre)).sum()), int((urine & (y > centre)).sum())
    return anterior >= 0.2 * comp.sum() and posterior <= 0.25 * anterior
