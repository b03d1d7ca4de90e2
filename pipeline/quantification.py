"""Exact volumes and the description of each blood collection.

Volume = voxel count x the voxel volume from the DICOM geometry (pixel
spacing x slice spacing from positions). Collections are the connected
components of the label volume on the working grid; every full-resolution
voxel falls in exactly one working block, so per-collection volumes add up
exactly to the total.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import ndimage

from pipeline import compartments
from pipeline.anatomy import ORGAN_CODES, Anatomy, uncertain_boundary
from pipeline.findings import BloodComponent, Compartment, ContrastFocus
from pipeline.labels import ACTIVE_EXTRAVASATION, CONTAINED_VASCULAR_INJURY, HEMORRHAGE, LABEL_NAMES
from pipeline.morphology import bounding_box, grow_box
from pipeline.settings import PipelineSettings
from pipeline.stages import StageContext

ORGAN_OF_CODE = {code: organ for organ, code in ORGAN_CODES.items()}
INSIDE_FRACTION = 0.5  # of a collection's blood in an organ's parenchyma


@dataclass
class Quantification:
    # hemorrhage (all blood: the sum of the two labels), non_enhancing_hemorrhage,
    # active_extravasation
    volumes_ml: dict[str, float]
    voxel_counts: dict[str, int]
    voxel_volume_mm3: float
    by_region_ml: dict[str, float]  # per compartment, each voxel in one: adds up to the total
    components: list[BloodComponent]
    compartments: list[Compartment] = field(default_factory=list)
    compartment_map: compartments.CompartmentMap | None = None  # where each working block's blood lies
    contrast_foci: list[ContrastFocus] = field(default_factory=list)  # set by pipeline.run, with their kinds


def count_labels(labels: np.ndarray) -> dict[str, int]:
    """Full-resolution voxel counts per label, and of all blood ("hemorrhage": their sum)."""
    box = bounding_box(labels)  # counted there: most of the volume holds no label
    part = labels[box] if box else labels[:0]
    counts = {name: int(np.count_nonzero(part == value)) for value, name in LABEL_NAMES.items()}
    return {"hemorrhage": sum(counts.values()), **counts}


def volumes_ml(counts: dict[str, int], voxel_volume_mm3: float) -> dict[str, float]:
    return {name: counts[name] * voxel_volume_mm3 / 1000.0
            for name in ("hemorrhage", *LABEL_NAMES.values())}


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
        blood_ml, blush_ml, contained_ml = (blocks * (voxel_mm3 / 1000) for blocks in _block_counts(labels, anatomy))
        # Any contrast focus inside an organ is parenchymal evidence, whatever its kind.
        where = compartments.assign(volume, anatomy, blood_ml > 0, self.settings, blood_ml, blush_ml + contained_ml)
        found = self._compartments(anatomy, where, blood_ml, blush_ml, contained_ml, labels)
        components = self._components(context, where, blood_ml, blush_ml)
        by_region = {c.name: c.volume_ml for c in found}
        return Quantification(volumes_ml(counts, voxel_mm3), counts, voxel_mm3, by_region, components, found,
                              where)

    def _compartments(self, anatomy: Anatomy, where: compartments.CompartmentMap, blood_ml: np.ndarray,
                      blush_ml: np.ndarray, contained_ml: np.ndarray, labels: np.ndarray) -> list[Compartment]:
        reach = self.settings.segmentation.organ_contact_mm
        out = []
        for code, name in enumerate(compartments.NAMES):
            mask = where.codes == code
            if not mask.any():
                continue
            organ = compartments.OWNER.get(name)
            parenchymal = name in compartments.INTRA.values()
            out.append(Compartment(
                name=name, volume_ml=round(float(blood_ml[mask].sum()), 3),
                active_extravasation_ml=round(float(blush_ml[mask].sum()), 3),
                contained_vascular_injury_ml=round(float(contained_ml[mask].sum()), 3),
                parenchymal=parenchymal, organ=organ,
                organs_adjacent=[organ] if parenchymal else where.adjacent_organs(code, reach),
                largest_extent_mm=round(float(compartments.largest_extent_mm(mask[where.crop], anatomy.spacing)), 1),
                voxel=compartments.representative_voxel(labels, anatomy, mask, prefer=HEMORRHAGE)))
        return sorted(out, key=lambda c: -c.volume_ml)

    def _components(self, context: StageContext, where: compartments.CompartmentMap,
                    blood_ml: np.ndarray, blush_ml: np.ndarray) -> list[BloodComponent]:
        anatomy = context.anatomy
        occupied = where.codes != compartments.NONE
        if not occupied.any():
            return []
        ids, count = ndimage.label(occupied, structure=np.ones((3, 3, 3), bool))
        total_ml = np.bincount(ids.ravel(), weights=blood_ml.ravel(), minlength=count + 1)
        total_blush = np.bincount(ids.ravel(), weights=blush_ml.ravel(), minlength=count + 1)
        out = []
        for index, box in enumerate(ndimage.find_objects(ids), start=1):
            component = ids[box] == index
            codes, ml = where.codes[box][component], blood_ml[box][component]
            by_compartment = {compartments.NAMES[c]: round(float(ml[codes == c].sum()), 3)
                              for c in np.unique(codes)}
            main = max(by_compartment, key=by_compartment.get)
            inside = compartments.OWNER[main] if (
                main in compartments.INTRA.values()
                and by_compartment[main] >= INSIDE_FRACTION * total_ml[index]) else None
            touched = _touched(anatomy, box, component, self.settings.segmentation.organ_contact_mm)
            k, i, j = np.asarray(ndimage.center_of_mass(component)) + [s.start for s in box]
            centroid = anatomy.patient_point(context.volume, k, i, j)
            extent = max((s.stop - s.start) * d for s, d in zip(box, anatomy.spacing))
            out.append(BloodComponent(
                id=index, volume_ml=round(float(total_ml[index]), 3),
                active_extravasation_ml=round(float(total_blush[index]), 3),
                region=main, organs_touched=touched, inside_organ=inside,
                max_extent_mm=round(float(extent), 1),
                slices=[anatomy.full_slices(box[0].start)[0], anatomy.full_slices(box[0].stop - 1)[-1]],
                centroid_mm=[round(float(v), 1) for v in centroid],
                compartments=dict(sorted(by_compartment.items(), key=lambda t: -t[1])),
                boundary_uncertain=uncertain_boundary(anatomy, box, component)))
        return sorted(out, key=lambda c: -c.volume_ml)


def _block_counts(labels: np.ndarray, anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-resolution counts of blood, blush and contained vascular injury voxels in each
    working block.

    Labels outside the working window (outside the patient) are not in any
    collection; the totals, counted on the whole volume, still include them.
    """
    box = bounding_box(labels)
    tests = (lambda a: a != 0, lambda a: a == ACTIVE_EXTRAVASATION, lambda a: a == CONTAINED_VASCULAR_INJURY)
    return tuple(_count_blocks(labels, anatomy, test, box) for test in tests)


def _count_blocks(labels: np.ndarray, anatomy: Anatomy, test: Callable[[np.ndarray], np.ndarray],
                  box: tuple[slice, ...] | None) -> np.ndarray:
    """Voxels passing test per working block, counted only over the blocks round their
    bounding box (found within box, the labels' own): a blush is a few blocks."""
    f, fz = anatomy.factor, anatomy.z_factor
    out = np.zeros(anatomy.hu.shape, dtype=np.uint16)
    inner = bounding_box(test(labels[box])) if box else None
    if inner is None:
        return out
    (r0, c0) = anatomy.origin
    kb, ib, jb = (slice(max(0, (b.start + s.start - o) // m), min(size, -(-(b.start + s.stop - o) // m)))
                  for b, s, o, m, size in zip(box, inner, (0, r0, c0), (fz, f, f), out.shape))
    if ib.start >= ib.stop or jb.start >= jb.stop:  # outside the working window
        return out
    region = labels[kb.start * fz:kb.stop * fz, r0 + ib.start * f:r0 + ib.stop * f, c0 + jb.start * f:c0 + jb.stop * f]
    out[kb, ib, jb] = block_sums(test(region), f, fz)
    return out


def block_sums(mask: np.ndarray, f: int, fz: int) -> np.ndarray:
    """Set voxels per block of fz slices x f x f pixels (uint16; the last slice block may
    be shorter). Strided additions, one per position in the block: a reshape-and-sum
    over the block axes is several times slower."""
    plane = np.zeros((len(mask), mask.shape[1] // f, mask.shape[2] // f), dtype=np.uint16)
    for a in range(f):
        for b in range(f):
            plane += mask[:, a::f, b::f]
    return np.add.reduceat(plane, np.arange(0, len(plane), fz), axis=0)


def _touched(anatomy: Anatomy, box: tuple[slice, ...], component: np.ndarray,
             reach_mm: float) -> list[str]:
    """Organs within reach of the collection, the most touched first (adjacency, not injury)."""
    margin = [math.ceil(reach_mm / d) for d in anatomy.spacing]
    grown = grow_box(box, margin, anatomy.regions.shape)
    local = np.zeros([g.stop - g.start for g in grown], dtype=bool)
    offset = tuple(slice(s.start - g.start, s.stop - g.start) for s, g in zip(box, grown))
    local[offset] = component
    regions = anatomy.regions[grown]
    near = ndimage.distance_transform_edt(~local, sampling=anatomy.spacing) <= reach_mm
    codes, hits = np.unique(regions[near & ~local], return_counts=True)
    return [ORGAN_OF_CODE[c] for c, _ in sorted(zip(codes, hits), key=lambda t: -t[1])
            if c in ORGAN_OF_CODE]
