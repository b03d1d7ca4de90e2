"""Where each voxel of blood lies: organ parenchyma or a peritoneal compartment.

Every occupied working block gets exactly one compartment, so the compartment
volumes add up to the total. An organ is injured only on evidence inside it
(blood deep in its parenchyma, or a contained blush); blood beside an organ
belongs to the compartment it lies in, and the organs it touches are listed as
adjacency, never as injury.

Compartments follow the peritoneal spaces a trauma reader names (Federle &
Jeffrey, Radiology 1983;148:187-92, counted them to size hemoperitoneum):
perihepatic (Morison's pouch included: blood there lists the right kidney as
adjacent), perisplenic (the left upper quadrant, splenorenal recess included),
the paracolic gutters, the central (mesenteric) space and the pelvis; perirenal
for blood beside a kidney that no liver or spleen is near.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.anatomy import ORGAN_CODES, OUTSIDE, SOLID_CODES, Anatomy
from pipeline.morphology import bounding_box, grow_box
from pipeline.settings import PipelineSettings
from pipeline.volume import Volume

INTRA = {"liver": "intrahepatic", "spleen": "intrasplenic", "kidney_right": "intrarenal_right",
         "kidney_left": "intrarenal_left"}
NAMES = (*INTRA.values(), "perihepatic", "perisplenic", "perirenal_right",
         "perirenal_left", "right_paracolic", "left_paracolic", "central", "pelvic")
CODE = {name: code for code, name in enumerate(NAMES)}
NONE = -1
# The organ each compartment is named after: its blood counts as that organ's
# adjacent (or intraparenchymal) blood, each compartment for one organ only.
OWNER = {**{intra: organ for organ, intra in INTRA.items()},
         "perihepatic": "liver", "perisplenic": "spleen",
         "perirenal_right": "kidney_right", "perirenal_left": "kidney_left"}

# Blood this close to the liver or spleen lies in its space (about the depth of
# a large perihepatic or perisplenic collection); kidneys, retroperitoneal
# and smaller, claim only what lies against them.
UPPER_ORGAN_REACH_MM = 40.0
KIDNEY_REACH_MM = 15.0
# How far assign's rules compare each organ's distance (bowel: adjacency only).
RULE_REACH_MM = {"liver": UPPER_ORGAN_REACH_MM, "spleen": UPPER_ORGAN_REACH_MM,
                 "kidney_right": KIDNEY_REACH_MM, "kidney_left": KIDNEY_REACH_MM}
# Beyond this share of the body's half-width from its centre, blood is in a
# paracolic gutter rather than the central (mesenteric) space.
LATERAL_FRACTION = 0.5


@dataclass
class CompartmentMap:
    """One compartment code per working block (NONE where there is no blood)."""

    codes: np.ndarray  # int8, the working grid's shape
    # organ -> distance of each block of blood to it, in the crop: exact up to
    # exact_within_mm, beyond that only known to be farther (inf where not computed)
    distances_mm: dict[str, np.ndarray]
    crop: tuple[slice, ...]  # the working-grid region the distances cover
    exact_within_mm: float = math.inf

    def name_at(self, anatomy: Anatomy, k: float, i: float, j: float) -> str:
        """The compartment of the full-resolution voxel (k, i, j), or 'other' outside the blood."""
        (r0, c0), f = anatomy.origin, anatomy.factor
        at = (int(k) // anatomy.z_factor, (int(i) - r0) // f, (int(j) - c0) // f)
        inside = all(0 <= a < n for a, n in zip(at, self.codes.shape))
        code = int(self.codes[at]) if inside else NONE
        return NAMES[code] if code != NONE else "other"

    def adjacent_organs(self, code: int, reach_mm: float) -> list[str]:
        """Organs within reach of the compartment's blood, nearest first."""
        if reach_mm > self.exact_within_mm:
            raise ValueError(f"distances are exact within {self.exact_within_mm} mm, not {reach_mm}")
        inside = self.codes[self.crop] == code
        if not inside.any():
            return []
        nearest = {organ: float(d[inside].min()) for organ, d in self.distances_mm.items()}
        return [organ for organ, d in sorted(nearest.items(), key=lambda t: t[1]) if d <= reach_mm]


def assign(volume: Volume, anatomy: Anatomy, occupied: np.ndarray, settings: PipelineSettings,
           blood_ml: np.ndarray, blush_ml: np.ndarray) -> CompartmentMap:
    """The compartment of each occupied block.

    blood_ml and blush_ml: the full-resolution blood and blush in each block,
    in mL (an organ keeps intraparenchymal blocks only when they add up to
    segmentation.min_intraparenchymal_ml, or hold a blush: a collection's rim
    blurred into an organ's edge is not an injury).
    """
    codes = np.full(occupied.shape, NONE, dtype=np.int8)
    if not occupied.any():
        return CompartmentMap(codes, {}, tuple(slice(0, 0) for _ in occupied.shape))
    crop = _crop(occupied, anatomy)
    regions, here = anatomy.regions[crop], occupied[crop]
    # Each organ's distance is needed as far as a rule below reaches, and to organ_contact_mm
    # (adjacency); beyond, only as farther.
    contact = settings.segmentation.organ_contact_mm
    reach = {organ: max(RULE_REACH_MM.get(organ, 0.0), contact) for organ in ORGAN_CODES}
    distances = {organ: _distance(regions == code, here, anatomy.spacing, reach[organ])
                 for organ, code in ORGAN_CODES.items()}
    out = np.full(here.shape, NONE, dtype=np.int8)

    # Deep inside an organ (one working pixel in from its outline): parenchymal.
    min_ml = settings.segmentation.min_intraparenchymal_ml
    for organ, intra in INTRA.items():
        deep = here & _eroded(regions == ORGAN_CODES[organ])
        if deep.any() and (blood_ml[crop][deep].sum() >= min_ml or blush_ml[crop][deep].sum() > 0):
            out[deep] = CODE[intra]

    rest = here & (out == NONE)
    d = distances
    near_spleen = rest & (d["spleen"] <= UPPER_ORGAN_REACH_MM) & (d["spleen"] <= d["liver"])
    near_liver = rest & ~near_spleen & (d["liver"] <= UPPER_ORGAN_REACH_MM)
    out[near_liver] = CODE["perihepatic"]  # Morison's pouch is part of it
    out[near_spleen] = CODE["perisplenic"]  # the splenorenal recess is part of it
    rest &= out == NONE
    for organ in ("kidney_right", "kidney_left"):
        out[rest & (d[organ] <= KIDNEY_REACH_MM) & (out == NONE)] = CODE[f"perirenal_{organ[7:]}"]
    rest &= out == NONE

    below = _below_solid_organs(anatomy, crop, here.shape)
    out[rest & below] = CODE["pelvic"]
    rest &= ~below
    lateral, left = _lateral_side(volume, anatomy, crop)
    out[rest & lateral & left] = CODE["left_paracolic"]
    out[rest & lateral & ~left] = CODE["right_paracolic"]
    out[rest & ~lateral] = CODE["central"]
    codes[crop] = out
    return CompartmentMap(codes, distances, crop, contact)


def representative_voxel(labels: np.ndarray, anatomy: Anatomy, mask: np.ndarray,
                         prefer: int) -> list[int] | None:
    """A full-resolution voxel [slice, row, column] of the blood in mask (working blocks), in
    the block nearest the mask's centre, of the label value preferred where there is one:
    where a viewer points to show the finding."""
    blocks = np.argwhere(mask)
    if not len(blocks):
        return None
    offsets = (blocks - blocks.mean(axis=0)) * np.asarray(anatomy.spacing)
    f, (r0, c0) = anatomy.factor, anatomy.origin
    for kb, ib, jb in blocks[np.argsort((offsets ** 2).sum(axis=1))[:64]]:
        for k in anatomy.full_slices(int(kb)):
            patch = labels[k, r0 + ib * f:r0 + (ib + 1) * f, c0 + jb * f:c0 + (jb + 1) * f]
            hits = np.argwhere(patch == prefer)
            hits = hits if len(hits) else np.argwhere(patch > 0)
            if len(hits):
                i, j = hits[len(hits) // 2]
                return [int(k), int(r0 + ib * f + i), int(c0 + jb * f + j)]
    return None


def largest_extent_mm(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """The largest bounding-box side of the mask's largest connected piece: a diameter estimate
    (the same on any box that holds the whole mask)."""
    labels, count = ndimage.label(mask)
    if not count:
        return 0.0
    biggest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    box = ndimage.find_objects(labels)[biggest - 1]
    return max((s.stop - s.start) * d for s, d in zip(box, spacing))


def _crop(occupied: np.ndarray, anatomy: Anatomy) -> tuple[slice, ...]:
    """The blood's bounding box grown by the farthest reach: distances within it are exact."""
    margin = [math.ceil(UPPER_ORGAN_REACH_MM / d) + 1 for d in anatomy.spacing]
    found = np.nonzero(occupied)
    return tuple(slice(max(0, int(a.min()) - m), min(n, int(a.max()) + 1 + m))
                 for a, m, n in zip(found, margin, occupied.shape))


def _distance(organ: np.ndarray, blood: np.ndarray, spacing: tuple[float, float, float],
              reach_mm: float) -> np.ndarray:
    """Distance (mm) to the organ, exact at the blood within reach_mm of it.

    The transform runs only over the box of that blood grown by reach_mm, which
    holds every organ voxel within reach of it (a fraction of the crop: the
    transform is the costliest step of the quantification); elsewhere the
    distance is at least the true one, and beyond reach_mm either way (inf
    outside the box). Distances come from coordinate differences, so the box's
    position does not change them.
    """
    out = np.full(organ.shape, np.inf, dtype=np.float32)
    margin = [math.ceil(reach_mm / d) for d in spacing]
    organ_box = bounding_box(organ)
    if organ_box is None:
        return out
    near = grow_box(organ_box, margin, organ.shape)
    blood_box = bounding_box(blood[near])
    if blood_box is None:
        return out
    box = grow_box(tuple(slice(b.start + n.start, b.stop + n.start) for b, n in zip(blood_box, near)),
                   margin, organ.shape)
    if organ[box].any():
        out[box] = ndimage.distance_transform_edt(~organ[box], sampling=spacing)
    return out


def _eroded(organ: np.ndarray) -> np.ndarray:
    """One pixel in from the organ's outline, in-plane (over the organ's box and a pixel round it)."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    out = np.zeros(organ.shape, dtype=bool)
    box = bounding_box(organ)
    if box is not None:
        box = grow_box(box, (1, 1, 1), organ.shape)
        out[box] = ndimage.binary_erosion(organ[box], structure=structure)
    return out


def _below_solid_organs(anatomy: Anatomy, crop: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Slices caudal to every liver, spleen and kidney slice: the pelvis (slices run cranial first)."""
    solid = np.flatnonzero(np.isin(anatomy.regions, SOLID_CODES).any(axis=(1, 2)))
    below = np.zeros(shape, dtype=bool)
    if solid.size:
        first = max(0, int(solid[-1]) + 1 - crop[0].start)
        below[first:] = True
    return below


def _lateral_side(volume: Volume, anatomy: Anatomy, crop: tuple[slice, ...]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per block of the crop: beyond LATERAL_FRACTION of the body's half-width, and on the patient's left."""
    body = anatomy.regions[crop[0]] > OUTSIDE  # whole rows and columns: the body's full width
    columns = np.arange(body.shape[2])
    has = body.any(axis=1)  # (slices, columns)
    first = np.where(has.any(axis=1), np.argmax(has, axis=1), 0)
    last = np.where(has.any(axis=1), body.shape[2] - 1 - np.argmax(has[:, ::-1], axis=1), body.shape[2] - 1)
    centre, half = (first + last) / 2, np.maximum((last - first) / 2, 1)
    offset = (columns[None, :] - centre[:, None]) / half[:, None]  # (slices, columns)
    # LPS: +x is the patient's left; the row direction says which way columns run.
    left_is_up = volume.row_direction[0] > 0
    lateral = np.abs(offset) > LATERAL_FRACTION
    left = offset > 0 if left_is_up else offset < 0
    rows = crop[1].stop - crop[1].start
    expand = lambda a: np.repeat(a[:, None, crop[2]], rows, axis=1)  # noqa: E731
    return expand(lateral), expand(left)
