"""Exact volumes and the description of each blood collection.

Volume = voxel count x the voxel volume from the DICOM geometry (pixel
spacing x slice spacing from positions). Collections are the connected
components of the label volume on the working grid; every full-resolution
voxel falls in exactly one working block, so per-collection volumes add up
exactly to the total.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.anatomy import ORGAN_CODES, SOLID_CODES, Anatomy
from pipeline.findings import BloodComponent
from pipeline.labels import ACTIVE_EXTRAVASATION, LABEL_NAMES
from pipeline.settings import PipelineSettings
from pipeline.stages import StageContext

ORGAN_OF_CODE = {code: organ for organ, code in ORGAN_CODES.items()}
PERI_REGION = {"liver": "perihepatic", "spleen": "perisplenic", "kidney_right": "perirenal_right",
               "kidney_left": "perirenal_left", "bowel": "peribowel"}
INTRA_REGION = {"liver": "intrahepatic", "spleen": "intrasplenic", "kidney_right": "intrarenal_right",
                "kidney_left": "intrarenal_left"}
INSIDE_FRACTION = 0.5  # of a collection's voxels within an organ's outline


@dataclass
class Quantification:
    volumes_ml: dict[str, float]  # hemorrhage (all blood incl. blush), active_extravasation
    voxel_counts: dict[str, int]
    voxel_volume_mm3: float
    by_region_ml: dict[str, float]
    components: list[BloodComponent]


def labelled_slices(labels: np.ndarray) -> np.ndarray:
    """Indices of the slices with any label (most slices have none)."""
    return np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1))


def count_labels(labels: np.ndarray) -> dict[str, int]:
    """Full-resolution voxel counts per finding (hemorrhage includes the blush)."""
    blood = blush = 0
    for k in labelled_slices(labels):
        blood += int(np.count_nonzero(labels[k]))
        blush += int(np.count_nonzero(labels[k] == ACTIVE_EXTRAVASATION))
    return {"hemorrhage": blood, "active_extravasation": blush}


def volumes_ml(counts: dict[str, int], voxel_volume_mm3: float) -> dict[str, float]:
    return {name: counts[name] * voxel_volume_mm3 / 1000.0 for name in LABEL_NAMES.values()}


class VoxelQuantification:
    name = "voxel-count"
    version = "1.0"
    description = "exact voxel counts x DICOM voxel volume; collections on the working grid"

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings

    def run(self, context: StageContext, labels: np.ndarray) -> Quantification:
        volume, anatomy = context.volume, context.anatomy
        counts = count_labels(labels)
        voxel_mm3 = volume.voxel_volume_mm3
        blood_blocks, blush_blocks = _block_counts(labels, anatomy)
        components = self._components(context, blood_blocks, blush_blocks, voxel_mm3)
        by_region: dict[str, float] = {}
        for c in components:
            by_region[c.region] = by_region.get(c.region, 0.0) + c.volume_ml
        return Quantification(volumes_ml(counts, voxel_mm3), counts, voxel_mm3, by_region, components)

    def _components(self, context: StageContext, blood_blocks: np.ndarray, blush_blocks: np.ndarray,
                    voxel_mm3: float) -> list[BloodComponent]:
        anatomy = context.anatomy
        occupied = blood_blocks > 0
        if not occupied.any():
            return []
        ids, count = ndimage.label(occupied, structure=np.ones((3, 3, 3), bool))
        blood_ml = np.bincount(ids.ravel(), weights=blood_blocks.ravel(), minlength=count + 1) * voxel_mm3 / 1000
        blush_ml = np.bincount(ids.ravel(), weights=blush_blocks.ravel(), minlength=count + 1) * voxel_mm3 / 1000
        lowest_organ_slice = _lowest_solid_organ_slice(anatomy)
        out = []
        for index, box in enumerate(ndimage.find_objects(ids), start=1):
            component = ids[box] == index
            touched, inside = _contacts(anatomy, box, component,
                                        self.settings.segmentation.organ_contact_mm)
            k, i, j = np.asarray(ndimage.center_of_mass(component)) + [s.start for s in box]
            centroid = anatomy.patient_point(context.volume, k, i, j)
            extent = max((s.stop - s.start) * d for s, d in zip(box, anatomy.spacing))
            out.append(BloodComponent(
                id=index, volume_ml=round(float(blood_ml[index]), 3),
                active_extravasation_ml=round(float(blush_ml[index]), 3),
                region=_region(touched, inside, k, lowest_organ_slice),
                organs_touched=touched, inside_organ=inside,
                max_extent_mm=round(float(extent), 1),
                slices=[anatomy.full_slices(box[0].start)[0], anatomy.full_slices(box[0].stop - 1)[-1]],
                centroid_mm=[round(float(v), 1) for v in centroid]))
        return sorted(out, key=lambda c: -c.volume_ml)


def _block_counts(labels: np.ndarray, anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution counts of blood and blush voxels in each working block.

    Labels outside the working window (outside the patient) are not in any
    collection; the totals, counted on the whole volume, still include them.
    """
    f, fz = anatomy.factor, anatomy.z_factor
    n, r, c = anatomy.hu.shape
    blood = np.zeros((n, r, c), dtype=np.uint16)
    blush = np.zeros((n, r, c), dtype=np.uint16)
    window = anatomy.window
    for k in labelled_slices(labels):
        blocks = labels[k][window].reshape(r, f, c, f)
        blood[k // fz] += np.count_nonzero(blocks, axis=(1, 3)).astype(np.uint16)
        blush[k // fz] += np.count_nonzero(blocks == ACTIVE_EXTRAVASATION, axis=(1, 3)).astype(np.uint16)
    return blood, blush


def _lowest_solid_organ_slice(anatomy: Anatomy) -> int | None:
    solid = np.isin(anatomy.regions, SOLID_CODES).any(axis=(1, 2))
    found = np.flatnonzero(solid)
    return int(found[-1]) if found.size else None


def _contacts(anatomy: Anatomy, box: tuple[slice, ...], component: np.ndarray,
              reach_mm: float) -> tuple[list[str], str | None]:
    """Organs within reach of the collection, and the organ enclosing it, if any."""
    margin = [math.ceil(reach_mm / d) for d in anatomy.spacing]
    grown = tuple(slice(max(0, s.start - m), min(n, s.stop + m))
                  for s, m, n in zip(box, margin, anatomy.regions.shape))
    local = np.zeros([g.stop - g.start for g in grown], dtype=bool)
    offset = tuple(slice(s.start - g.start, s.stop - g.start) for s, g in zip(box, grown))
    local[offset] = component
    regions = anatomy.regions[grown]
    near = ndimage.distance_transform_edt(~local, sampling=anatomy.spacing) <= reach_mm
    codes, hits = np.unique(regions[near & ~local], return_counts=True)
    touched = [ORGAN_OF_CODE[c] for c, _ in sorted(zip(codes, hits), key=lambda t: -t[1])
               if c in ORGAN_OF_CODE]
    own = regions[local]
    inside = None
    for code, organ in ORGAN_OF_CODE.items():
        if organ in INTRA_REGION and np.mean(own == code) >= INSIDE_FRACTION:
            inside = organ
    return touched, inside


def _region(touched: list[str], inside: str | None, slice_index: float,
            lowest_organ_slice: int | None) -> str:
    if inside:
        return INTRA_REGION[inside]
    if lowest_organ_slice is not None and slice_index > lowest_organ_slice:
        return "pelvic"  # below the liver, spleen and kidneys (slices run cranial to caudal)
    return PERI_REGION[touched[0]] if touched else "other"
