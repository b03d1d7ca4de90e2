"""Coarse anatomy for the embedded baseline: body, peritoneal cavity, organs.

Everything here works on a working-resolution copy of the volume (in-plane
block means to about ``working_pixel_mm``), which keeps the 3D steps fast and
the memory small; the segmentation refines its result at full resolution.

The peritoneal cavity is the body minus the subcutaneous fat (fat connected to
the skin) minus the muscular wall, whose thickness is measured as the depth at
which the intra-abdominal fat begins. Muscle has the HU of blood, so without
this step the wall would be read as a ring of hemorrhage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from pipeline.settings import PipelineSettings
from pipeline.volume import Volume

# Region codes of Anatomy.regions, by priority (later codes win overlaps).
OUTSIDE, BODY_WALL, CAVITY, BOWEL, KIDNEY_RIGHT, KIDNEY_LEFT, SPLEEN, LIVER, AORTA, BONE = range(10)
ORGAN_CODES = {"liver": LIVER, "spleen": SPLEEN, "kidney_right": KIDNEY_RIGHT,
               "kidney_left": KIDNEY_LEFT, "bowel": BOWEL}
SOLID_ORGANS = ("liver", "spleen", "kidney_right", "kidney_left")

CHUNK_SLICES = 32  # slices per block-mean chunk: bounds the float32 temporaries
AORTA_MAX_AREA_MM2 = 1200.0  # about 4 cm across: a larger tube is not the aorta
ORGAN_MIN_ML = {"liver": 300.0, "spleen": 30.0, "kidney": 30.0}
KIDNEY_MAX_ML = 600.0
BOWEL_WALL_MM = 5.0


@dataclass
class Anatomy:
    """Working-resolution HU and region map, with what was measured on the way."""

    factor: int  # full-resolution pixels per working pixel, along rows and columns
    hu: np.ndarray  # int16 (slices, rows // factor, cols // factor), lightly smoothed
    regions: np.ndarray  # uint8 region codes, same shape
    spacing: tuple[float, float, float]
    wall_mm: float
    aorta_hu: float | None
    midline: np.ndarray  # patient coordinates of the body centroid
    notes: list[str] = field(default_factory=list)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def cavity(self) -> np.ndarray:
        """Inside the peritoneal cavity and not bone or aorta."""
        r = self.regions
        return (r >= CAVITY) & (r < AORTA)

    def organ_found(self, organ: str) -> bool:
        return bool(np.any(self.regions == ORGAN_CODES[organ]))


def working_factor(volume: Volume, settings: PipelineSettings) -> int:
    pixel = min(volume.spacing[1:])
    return max(1, int(round(settings.segmentation.working_pixel_mm / pixel)))


def block_mean(hu: np.ndarray, factor: int) -> np.ndarray:
    """In-plane block means (then a 3x3 mean against noise), as int16."""
    n, rows, cols = hu.shape
    r, c = rows // factor, cols // factor
    out = np.empty((n, r, c), dtype=np.int16)
    for k0 in range(0, n, CHUNK_SLICES):
        chunk = hu[k0:k0 + CHUNK_SLICES, :r * factor, :c * factor].astype(np.float32)
        chunk = chunk.reshape(len(chunk), r, factor, c, factor).mean(axis=(2, 4))
        ndimage.uniform_filter(chunk, size=(1, 3, 3), output=chunk, mode="nearest")
        out[k0:k0 + CHUNK_SLICES] = np.rint(chunk)
    return out


def build_anatomy(volume: Volume, settings: PipelineSettings) -> Anatomy:
    factor = working_factor(volume, settings)
    hu = block_mean(volume.hu, factor)
    dz, dy, dx = volume.spacing
    spacing = (dz, dy * factor, dx * factor)
    anatomy = Anatomy(factor, hu, np.zeros(hu.shape, dtype=np.uint8), spacing,
                      settings.segmentation.default_wall_mm, None, np.zeros(3))
    _body_and_cavity(anatomy, settings)
    anatomy.midline = _patient_centroid(volume, anatomy, anatomy.regions > OUTSIDE)
    _bone_and_aorta(anatomy, settings)
    _organs(volume, anatomy, settings)
    return anatomy


# --- body, wall and cavity ---------------------------------------------------

def _body_slice(hu: np.ndarray, settings: PipelineSettings) -> np.ndarray:
    body = ndimage.binary_fill_holes(hu > settings.hu.body_min)
    labels, count = ndimage.label(body)
    if count > 1:  # keep the patient, drop the table and cables
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        body = labels == int(np.argmax(sizes))
    return body


def _inside_subcutaneous_fat(hu: np.ndarray, body: np.ndarray, settings: PipelineSettings) -> np.ndarray:
    """Body minus the skin and the fat connected to it."""
    fat = (hu >= settings.hu.fat_min) & (hu <= settings.hu.fat_max) & body
    rim = body & ~ndimage.binary_erosion(body, iterations=3)  # skin blurs into air
    subcutaneous = ndimage.binary_propagation(rim & fat, mask=fat)
    inner = ndimage.binary_fill_holes(body & ~subcutaneous & ~rim)
    labels, count = ndimage.label(inner)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        inner = labels == int(np.argmax(sizes))
    return inner


def _wall_depth(hu: np.ndarray, inner: np.ndarray, depth: np.ndarray, settings: PipelineSettings) -> float | None:
    """Depth (mm) at which the intra-abdominal fat begins: the wall's thickness."""
    fat = inner & (hu >= settings.hu.fat_min) & (hu <= settings.hu.fat_max)
    if fat.sum() < 20:
        return None
    return float(np.percentile(depth[fat], 5))


def _body_and_cavity(anatomy: Anatomy, settings: PipelineSettings) -> None:
    hu, regions = anatomy.hu, anatomy.regions
    in_plane = anatomy.spacing[1:]

    def layers(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        body = _body_slice(hu[k], settings)
        inner = _inside_subcutaneous_fat(hu[k], body, settings)
        depth = ndimage.distance_transform_edt(inner, sampling=in_plane).astype(np.float32)
        return body, inner, depth

    # The wall thickness is measured on a sample of slices, then used everywhere.
    sample = range(0, len(hu), max(1, len(hu) // 24))
    depths = [d for k in sample
              if (d := _wall_depth(hu[k], *layers(k)[1:], settings)) is not None]
    if depths:
        anatomy.wall_mm = float(np.clip(np.median(depths), 2.0, 30.0))
    else:
        anatomy.notes.append("abdominal wall not measured: default thickness used")
    for k in range(len(hu)):
        body, inner, depth = layers(k)
        regions[k][body] = BODY_WALL
        regions[k][inner & (depth > anatomy.wall_mm)] = CAVITY


# --- bone, aorta, organs -------------------------------------------------------

def _bone_and_aorta(anatomy: Anatomy, settings: PipelineSettings) -> None:
    hu, regions = anatomy.hu, anatomy.regions
    vessel = (regions == CAVITY) & (hu >= settings.hu.vessel_min) & (hu < settings.hu.bone_min)
    labels, count = ndimage.label(vessel)
    best, best_span = 0, 0
    pixel_area = anatomy.spacing[1] * anatomy.spacing[2]
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        span = box[0].stop - box[0].start
        voxels = int(np.count_nonzero(labels[box] == index))
        if span > best_span and voxels * pixel_area / span <= AORTA_MAX_AREA_MM2:
            best, best_span = index, span
    if best and best_span >= max(3, 0.3 * len(hu)):
        aorta = labels == best
        anatomy.aorta_hu = float(np.median(hu[aorta]))
        regions[aorta] = AORTA
    else:
        anatomy.notes.append("aorta not found: blush threshold falls back to "
                             f"{settings.hu.blush_fallback_min:g} HU inside organs")
    del labels, vessel
    bone = (regions > OUTSIDE) & (hu >= settings.hu.bone_min)
    regions[ndimage.binary_dilation(bone, structure=_in_plane_disc(1))] = BONE


def _in_plane_disc(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    disc = (r[:, None] ** 2 + r[None, :] ** 2) <= radius ** 2
    return disc[None, :, :]


def _patient_centroid(volume: Volume, anatomy: Anatomy, mask: np.ndarray) -> np.ndarray:
    k, i, j = ndimage.center_of_mass(mask)
    f = anatomy.factor
    return volume.patient_point(k, i * f + (f - 1) / 2, j * f + (f - 1) / 2)


def _components(mask: np.ndarray, min_voxels: int) -> list[np.ndarray]:
    labels, count = ndimage.label(mask)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    return [labels == n for n in range(1, count + 1) if sizes[n] >= min_voxels]


def _organs(volume: Volume, anatomy: Anatomy, settings: PipelineSettings) -> None:
    hu, regions = anatomy.hu, anatomy.regions
    voxel_ml = anatomy.voxel_volume_mm3 / 1000.0
    cavity = regions == CAVITY
    left_of = lambda c: c[0] > anatomy.midline[0]  # noqa: E731  LPS: +x is patient left
    posterior = lambda c: c[1] > anatomy.midline[1]  # noqa: E731  LPS: +y is posterior

    # Gas-filled loops, with their wall, are bowel.
    gas = _components(cavity & (hu < settings.hu.body_min), max(1, int(0.5 / voxel_ml)))
    if gas:
        loops = np.logical_or.reduce(gas)
        reach = max(1, int(round(BOWEL_WALL_MM / anatomy.spacing[1])))
        regions[cavity & ndimage.binary_dilation(loops, structure=_in_plane_disc(reach))] = BOWEL

    parenchyma = cavity & (hu >= settings.hu.parenchyma_min) & (hu < settings.hu.parenchyma_max)
    parenchyma = ndimage.binary_opening(parenchyma, structure=_in_plane_disc(1))
    candidates = [(m, _patient_centroid(volume, anatomy, m))
                  for m in _components(parenchyma, int(ORGAN_MIN_ML["spleen"] / voxel_ml))]
    right = [m for m, c in candidates if not left_of(c) and m.sum() * voxel_ml >= ORGAN_MIN_ML["liver"]]
    left = [m for m, c in candidates if left_of(c)]
    for masks, code in ((right, LIVER), (left, SPLEEN)):
        if masks:
            regions[_filled(max(masks, key=np.sum))] = code

    enhancing = cavity & (hu >= settings.hu.vessel_min) & (hu < settings.hu.bone_min)
    kidneys = [(m, _patient_centroid(volume, anatomy, m))
               for m in _components(enhancing, int(ORGAN_MIN_ML["kidney"] / voxel_ml))
               if m.sum() * voxel_ml <= KIDNEY_MAX_ML]
    for side_is_left, code in ((False, KIDNEY_RIGHT), (True, KIDNEY_LEFT)):
        side = [m for m, c in kidneys if left_of(c) == side_is_left and posterior(c)]
        if side:
            regions[_filled(max(side, key=np.sum)) & (regions < AORTA)] = code
    for organ in ORGAN_CODES:
        if not anatomy.organ_found(organ):
            anatomy.notes.append(f"{organ.replace('_', ' ')} not located by the HU baseline")


def _filled(mask: np.ndarray) -> np.ndarray:
    """An organ with its holes (hematoma, blush inside it) filled, slice by slice."""
    out = np.zeros_like(mask)
    slices = np.flatnonzero(mask.any(axis=(1, 2)))
    for k in slices:
        out[k] = ndimage.binary_fill_holes(mask[k])
    return out
