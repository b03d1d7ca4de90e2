"""Embedded segmentation: HU thresholds, 3D morphology, connected components.

Candidates are found at working resolution inside the peritoneal cavity
(bone, aorta and the abdominal wall excluded by the anatomy step), then each
kept component is redrawn at full resolution (blood from median-filtered HU,
a blush at its own half-maximum edge), so that its volume follows the DICOM
voxels and not the working grid. What counts as active extravasation, and what
contrast does not, is pipeline/extravasation.py's rule table.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from pipeline import morphology
from pipeline.anatomy import Anatomy
from pipeline.extravasation import Blush, find_blush
from pipeline.labels import ACTIVE_EXTRAVASATION, HEMORRHAGE
from pipeline.settings import PipelineSettings
from pipeline.stages import StageContext
from pipeline.volume import Volume

REFINE_MARGIN = 2  # working pixels around a candidate redrawn at full resolution
MAX_NOISE_HOLE_PX = 20  # holes this small inside blood are noise, not tissue
# A thin layer against the wall (Anatomy.wall_lining) is kept this far in-plane
# from a collection it continues, and a working slice beyond its ends.
LINING_REACH_MM = 10.0


class HuSegmentation:
    name = "hu-baseline"
    # 1.2: a pixel that is itself fat is never blood; 1.3: the wall's lining only next to a collection
    version = "1.3"
    description = ("embedded CPU baseline, no model weights: HU thresholds, morphology and "
                   "connected components")

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings

    def run(self, context: StageContext) -> np.ndarray:
        blood, low, blush = self._candidates(context.volume, context.anatomy)
        context.notes.extend(blush.notes)
        labels = np.zeros(context.volume.hu.shape, dtype=np.uint8)
        self._refine(context, blood, low, blush, labels)
        return labels

    # --- working resolution -------------------------------------------------

    def _candidates(self, volume: Volume, anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray, Blush]:
        hu_s = self.settings.hu
        hu = anatomy.hu
        voxel_ml = anatomy.voxel_volume_mm3 / 1000.0
        cavity = anatomy.cavity()
        blood_range = cavity & (hu >= hu_s.blood_min) & (hu <= hu_s.blood_max)
        low = self._low_attenuation(anatomy, cavity, blood_range)
        blood_range |= low
        blush = find_blush(volume, anatomy, self.settings, blood_range)

        # Thin rims of partial volume round organs and vessels go with the opening.
        blood = morphology.open_(blood_range, morphology.in_plane(1)) | blush.mask
        lining = None if anatomy.wall_lining is None else blood_range & anatomy.wall_lining & ~blood
        del blood_range
        labels, count = ndimage.label(blood)
        keep = self._kept(labels, count, blush.mask, voxel_ml)
        if lining is not None and lining.any() and keep[1:].any():
            # A layer against the wall thinner than the opening stays where it
            # continues a collection (the wall made it look thick): next to it,
            # not all along the wall. The wall's innermost pixels lie beyond the
            # cut here and there and make one sheet the height of the wall;
            # flooded from any collection (or from the partial volume of an
            # organ pressed into the wall) it was read as 10-25 mL of blood.
            blood = blood | _near(keep[labels], lining, self._lining_steps(anatomy))
            labels, count = ndimage.label(blood)
            keep = self._kept(labels, count, blush.mask, voxel_ml)
        return keep[labels], low, blush

    def _kept(self, labels: np.ndarray, count: int, blush: np.ndarray, voxel_ml: float) -> np.ndarray:
        """Per label: large enough to be a collection, or holding a blush."""
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        keep = sizes * voxel_ml >= self.settings.segmentation.min_component_ml
        keep[np.unique(labels[blush])] = True
        keep[0] = False
        return keep

    @staticmethod
    def _lining_steps(anatomy: Anatomy) -> int:
        return max(1, math.ceil(LINING_REACH_MM / min(anatomy.spacing[1:])))

    def _low_attenuation(self, anatomy: Anatomy, cavity: np.ndarray, blood_range: np.ndarray) -> np.ndarray:
        """Voxels of blood_low_min-blood_min HU in a collection that has a thick core of them.

        Blood of 20-30 HU (unclotted or diluted, see HuSettings) has the HU of
        partial volume where an organ's edge or tip meets fluid-filled bowel,
        and of the rim of any collection; those are thin (a pixel or two
        in-plane, a slice along z). So the low band counts only in a collection
        whose core of it is segmentation.low_blood_core_mm wide and three
        working slices deep, out to where a box of three pixels and three
        slices fits (and a pixel beyond: its blurred edge). Noise holes are
        closed first: such blood lies a few HU above the floor.
        """
        hu_s, seg = self.settings.hu, self.settings.segmentation
        low = cavity & (anatomy.hu >= hu_s.blood_low_min) & (anatomy.hu < hu_s.blood_min)
        if not low.any():
            return low
        box = (3, 3, 3)
        collection = morphology.erode(morphology.dilate(low | blood_range, box), box) & cavity
        radius = max(1, math.ceil((seg.low_blood_core_mm / anatomy.spacing[1] - 1) / 2))
        core = morphology.erode(collection, (3,) + morphology.in_plane(radius)[1:]) & low
        body = morphology.reconstruct(core, morphology.open_(collection, box))
        return low & morphology.dilate(body, morphology.in_plane(1))

    # --- full resolution ------------------------------------------------------

    def _refine(self, context: StageContext, blood: np.ndarray, low: np.ndarray, blush: Blush,
                labels: np.ndarray) -> None:
        """Redraw each candidate at full resolution, slice by slice, over the full-resolution
        box of its working slice's candidates and a pixel round it."""
        anatomy, volume = context.anatomy, context.volume
        # Grown by a working slice too: a collection's thin ends may be too small for the grid.
        grow = (3,) + morphology.in_plane(REFINE_MARGIN)[1:]
        blood_near, low_near = morphology.dilate(blood, grow), morphology.dilate(low, grow)
        cavity = anatomy.cavity()
        full_shape = volume.hu.shape[1:]
        for kc in np.flatnonzero(blood_near.any(axis=(1, 2))):
            crop = anatomy.full_box(blood_near[kc], full_shape, margin=1)
            region, low_region, blush_edge, inside = (anatomy.upsample_box(m[kc], crop) for m in
                                                      (blood_near, low_near, blush.threshold, cavity))
            inside &= region
            for k in anatomy.full_slices(int(kc)):
                labels[k][crop] = self._refine_slice(volume.hu[k][crop], inside, low_region, blush_edge)

    def _refine_slice(self, raw: np.ndarray, inside: np.ndarray, low: np.ndarray,
                      edge: np.ndarray) -> np.ndarray:
        """The labels of one slice's box: raw HU, the candidate region within the cavity,
        where low-attenuation blood counts, and the blush thresholds (0: none)."""
        hu_s = self.settings.hu
        # Blood sits in a narrow HU window, so noise is taken out first; the
        # median keeps edges. A blush is cut at its half maximum, where noise
        # errs both ways, and the median would shave a small one's corners, so
        # it uses raw HU.
        hu = ndimage.median_filter(raw, size=3)
        if low.any():  # a few HU above its floor, low-attenuation blood needs a wider median
            hu = np.where(low, ndimage.median_filter(raw, size=5), hu)
        floor = np.where(low, hu_s.blood_low_min, hu_s.blood_min)
        # The median decides (noise), but a pixel that is itself fat is never blood: the median
        # of a fat pixel at a collection's edge is the blood's (OHIF showed -126 HU in the segment).
        is_blood = inside & (hu >= floor) & (hu <= hu_s.blood_max) & (raw > hu_s.fat_max)
        is_blush = (edge > 0) & inside & (raw >= edge) & (raw < hu_s.bone_min)
        out = np.where(is_blood | is_blush, HEMORRHAGE, 0).astype(np.uint8)
        # Noise holes in blood are filled, fat or gas in a hole is not blood.
        out[_small_holes(is_blood | is_blush) & (raw > hu_s.fat_max)] = HEMORRHAGE
        out[is_blush] = ACTIVE_EXTRAVASATION
        return out


def _near(collections: np.ndarray, lining: np.ndarray, steps: int) -> np.ndarray:
    """The lining reached from the collections within steps pixels in-plane
    (through the lining itself) and a slice beyond them along z."""
    grown = morphology.dilate(collections, (3, 1, 1)) & lining
    for _ in range(steps):
        grown = morphology.dilate(collections | grown, morphology.in_plane(1)) & lining
    return grown


def _small_holes(mask: np.ndarray) -> np.ndarray:
    """Holes (background not connected to the edge, 4-connected) of at most MAX_NOISE_HOLE_PX."""
    found, count = ndimage.label(~mask)
    small = np.bincount(found.ravel(), minlength=count + 1) <= MAX_NOISE_HOLE_PX
    small[found[[0, -1], :]] = False
    small[found[:, [0, -1]]] = False
    small[0] = False
    return small[found]
