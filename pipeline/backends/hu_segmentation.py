"""Embedded segmentation: HU thresholds, 3D morphology, connected components.

Candidates are found at working resolution inside the peritoneal cavity
(bone, aorta and the abdominal wall excluded by the anatomy step), then each
kept component is redrawn at full resolution (blood from median-filtered HU,
blush from raw HU), so that its volume follows the DICOM voxels and not the
working grid.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

from pipeline import morphology
from pipeline.anatomy import AORTA, LIVER, SOLID_CODES, SPLEEN, Anatomy, fill_holes_2d
from pipeline.labels import ACTIVE_EXTRAVASATION, HEMORRHAGE
from pipeline.settings import PipelineSettings
from pipeline.stages import StageContext

CONTAINED = (LIVER, SPLEEN)  # organs whose AAST scales grade contained active bleeding
REFINE_MARGIN = 2  # working pixels around a candidate redrawn at full resolution
MAX_NOISE_HOLE_PX = 20  # holes this small inside blood are noise, not tissue
SHELL_BLOOD_FRACTION = 0.5  # a blush outside organs must sit in a hematoma...
COMPACT_MAX_MM = 30.0  # ...or be a compact blob: a vessel runs longer than this
COMPACT_MAX_RATIO = 3.0


class HuSegmentation:
    name = "hu-baseline"
    version = "1.0"
    description = ("embedded CPU baseline, no model weights: HU thresholds, morphology and "
                   "connected components")

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings

    def run(self, context: StageContext) -> np.ndarray:
        anatomy = context.anatomy
        blood, blush, thresholds = self._candidates(anatomy)
        context.notes.extend(thresholds)
        labels = np.zeros(context.volume.hu.shape, dtype=np.uint8)
        self._refine(context, blood, blush, labels)
        return labels

    # --- working resolution -------------------------------------------------

    def _blush_min(self, anatomy: Anatomy) -> float:
        """Extravasated contrast enhances like the aorta on the same phase."""
        hu = self.settings.hu
        if anatomy.aorta_hu is None:
            return hu.blush_fallback_min
        return max(hu.blush_min, anatomy.aorta_hu - hu.blush_aorta_margin)

    def _candidates(self, anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray, list[str]]:
        hu_s, seg = self.settings.hu, self.settings.segmentation
        hu, regions = anatomy.hu, anatomy.regions
        voxel_ml = anatomy.voxel_volume_mm3 / 1000.0
        cavity = anatomy.cavity()
        blood_range = cavity & (hu >= hu_s.blood_min) & (hu <= hu_s.blood_max)
        solid = np.isin(regions, SOLID_CODES)
        blush_min = self._blush_min(anatomy)
        bright = cavity & (hu >= blush_min) & (hu < hu_s.bone_min)

        # Outside organs, a bright focus counts inside a hematoma, or as a
        # compact blob away from the aorta (a vessel is a long tube); inside
        # liver or spleen it is contained bleeding.
        blush_outside = self._keep(
            bright & ~solid, voxel_ml,
            lambda box, comp: (self._in_hematoma(box, comp, blood_range, solid)
                               or _compact_and_apart(box, comp, regions, anatomy.spacing)))
        blush_inside = self._keep(bright & np.isin(regions, CONTAINED), voxel_ml, lambda box, comp: True)
        blush = blush_outside | blush_inside

        # Thin rims of partial volume round organs and vessels go with the opening.
        blood = morphology.open_(blood_range, morphology.in_plane(1)) | blush
        lining = None if anatomy.wall_lining is None else blood_range & anatomy.wall_lining & ~blood
        if lining is not None and lining.any():
            # A layer against the wall thinner than the opening stays when it
            # continues a collection (the wall made it look thick).
            blood = _reconstruct(blood, blood | lining)
        del blood_range
        labels, count = ndimage.label(blood)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        with_blush = np.unique(labels[blush])
        keep = sizes * voxel_ml >= seg.min_component_ml
        keep[with_blush] = True
        keep[0] = False
        blood = keep[labels]
        notes = [f"blush threshold {blush_min:g} HU" + (
            " (no aorta found: fallback)" if anatomy.aorta_hu is None
            else f" (aorta {anatomy.aorta_hu:g} HU minus {hu_s.blush_aorta_margin:g})")]
        return blood, blush, notes

    def _keep(self, mask: np.ndarray, voxel_ml: float,
              accept: Callable[[tuple[slice, ...], np.ndarray], bool]) -> np.ndarray:
        """Components of mask within the blush size limits that accept() approves."""
        seg = self.settings.segmentation
        labels, count = ndimage.label(mask)
        sizes = np.bincount(labels.ravel(), minlength=count + 1) * voxel_ml
        kept = np.zeros_like(mask)
        for index, box in enumerate(ndimage.find_objects(labels), start=1):
            if box is None or not seg.min_blush_ml <= sizes[index] <= seg.max_blush_ml:
                continue
            grown = tuple(slice(max(0, s.start - m), s.stop + m) for s, m in zip(box, (1, 3, 3)))
            component = labels[grown] == index
            if accept(grown, component):
                kept[grown] |= component
        return kept

    @staticmethod
    def _in_hematoma(box: tuple[slice, ...], component: np.ndarray, blood_range: np.ndarray,
                     solid: np.ndarray) -> bool:
        # A ring three working pixels out: nearer ones are the blush's own blur.
        shell = (morphology.dilate(component, (3, 7, 7)) & ~morphology.dilate(component, (3, 5, 5))
                 & ~solid[box])
        if not shell.any():
            return False
        return float(blood_range[box][shell].mean()) >= SHELL_BLOOD_FRACTION

    # --- full resolution ------------------------------------------------------

    def _refine(self, context: StageContext, blood: np.ndarray, blush: np.ndarray,
                labels: np.ndarray) -> None:
        """Redraw each candidate at full resolution, slice by slice."""
        anatomy, volume = context.anatomy, context.volume
        # Grown by a working slice too: a collection's thin ends may be too small for the grid.
        grow = (3,) + morphology.in_plane(REFINE_MARGIN)[1:]
        blood_near, blush_near = morphology.dilate(blood, grow), morphology.dilate(blush, grow)
        cavity = anatomy.cavity()
        blush_min = self._blush_min(anatomy)
        full_shape = volume.hu.shape[1:]
        for kc in np.flatnonzero(blood_near.any(axis=(1, 2))):
            masks = [anatomy.upsample(m[kc], full_shape) for m in (blood_near, blush_near, cavity)]
            for k in anatomy.full_slices(int(kc)):
                self._refine_slice(volume.hu[k], labels[k], *masks, blush_min)

    def _refine_slice(self, hu_slice: np.ndarray, out_slice: np.ndarray, region: np.ndarray,
                      blush_region: np.ndarray, cavity: np.ndarray, blush_min: float) -> None:
        hu_s = self.settings.hu
        (r0, r1), (c0, c1) = [(int(a.min()), int(a.max()) + 1) for a in np.nonzero(region)]
        crop = (slice(max(0, r0 - 1), r1 + 1), slice(max(0, c0 - 1), c1 + 1))
        raw = hu_slice[crop]
        # Blood sits in a narrow HU window, so noise is taken out first; the
        # median keeps edges. A blush stands far above its threshold, and the
        # median would shave a small one's corners, so it uses raw HU.
        hu = ndimage.median_filter(raw, size=3)
        inside = region[crop] & cavity[crop]
        is_blood = inside & (hu >= hu_s.blood_min) & (hu <= hu_s.blood_max)
        is_blush = blush_region[crop] & inside & (raw >= blush_min) & (raw < hu_s.bone_min)
        out = np.where(is_blood | is_blush, HEMORRHAGE, 0).astype(np.uint8)
        out[_small_holes(is_blood | is_blush)] = HEMORRHAGE
        out[is_blush] = ACTIVE_EXTRAVASATION
        out_slice[crop] = out


def _compact_and_apart(box: tuple[slice, ...], component: np.ndarray, regions: np.ndarray,
                       spacing: tuple[float, float, float]) -> bool:
    extents = [span * d for span, d in zip(_spans(component), spacing)]
    compact = max(extents) <= COMPACT_MAX_MM and max(extents) <= COMPACT_MAX_RATIO * max(min(extents), spacing[0])
    touches_aorta = bool(np.any(regions[box][morphology.dilate(component, (3, 5, 5))] == AORTA))
    return compact and not touches_aorta


def _reconstruct(seeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The components of mask (3D) that hold a seed."""
    labels, count = ndimage.label(mask)
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[seeds])] = True
    keep[0] = False
    return keep[labels]


def _spans(mask: np.ndarray) -> list[int]:
    return [int(np.ptp(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))))) + 1
            for axis in range(3)]


def _small_holes(mask: np.ndarray) -> np.ndarray:
    holes = fill_holes_2d(mask) & ~mask
    found, count = ndimage.label(holes)
    if not count:
        return holes
    small = np.bincount(found.ravel()) <= MAX_NOISE_HOLE_PX
    small[0] = False
    return small[found]
