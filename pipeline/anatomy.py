"""Coarse anatomy for the embedded baseline: body, peritoneal cavity, organs.

Everything here works on a working-resolution copy of the volume (block means
to about ``working_pixel_mm`` in-plane and ``working_slice_mm`` between slices,
over the patient's bounding box), which keeps the 3D steps fast and the memory
small; the segmentation refines its result at full resolution.

The peritoneal cavity is the body minus the subcutaneous fat (fat connected to
the skin) minus the muscular wall. Muscle has the HU of blood, so without this
step the wall would be read as a ring of hemorrhage. The wall is the tissue of
muscle HU continuous with the wall's outer surface, down to the local wall
thickness: per angular sector of each slice, the median depth of its inner
surface where fat, fluid or gas begins (an organ pressed into the wall says
nothing of its thickness, and stays in the cavity being of other HU). Where
blood lies against the wall with no fat plane, that surface is the blood's, so
the thickness is taken from the wall beside it (a grey opening over
neighbouring sectors and along z), and the blood inward of it stays in the
cavity; that tissue is kept in ``wall_lining``, so that the segmentation keeps
a thin layer of it with the collection it continues, and the collection can
say its boundary was uncertain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from pipeline import morphology
from pipeline.findings import ContrastPhase
from pipeline.settings import PipelineSettings
from pipeline.volume import Volume

# Region codes of Anatomy.regions, by priority (later codes win overlaps).
OUTSIDE, BODY_WALL, CAVITY, BOWEL, KIDNEY_RIGHT, KIDNEY_LEFT, SPLEEN, LIVER, AORTA, BONE = range(10)
ORGAN_CODES = {"liver": LIVER, "spleen": SPLEEN, "kidney_right": KIDNEY_RIGHT,
               "kidney_left": KIDNEY_LEFT, "bowel": BOWEL}
SOLID_CODES = (LIVER, SPLEEN, KIDNEY_LEFT, KIDNEY_RIGHT)

CHUNK_SLICES = 32  # slices per block-mean chunk: bounds the float32 temporaries
AORTA_MAX_AREA_MM2 = 1200.0  # about 4 cm across: a larger tube is not the aorta
ORGAN_MIN_ML = {"liver": 300.0, "spleen": 30.0, "kidney": 30.0}
KIDNEY_MAX_ML = 600.0
# An organ tapers to its poles; a vessel it touches (an unopacified IVC or portal
# vein in the parenchyma window, on the arterial or delayed phase) runs on along
# z with a small, constant cross-section. Beyond the first slice, counted from the
# organ's largest one, where its area falls under this share of that largest one,
# what the component holds is a vessel, not the organ.
ORGAN_TAPER_SHARE = 0.05
BOWEL_WALL_MM = 5.0


@dataclass
class Anatomy:
    """Working-resolution HU and region map, with what was measured on the way."""

    factor: int  # full-resolution pixels per working pixel, along rows and columns
    z_factor: int  # full-resolution slices per working slice (thin slices are merged)
    slices: int  # full-resolution slice count
    origin: tuple[int, int]  # full-resolution (row, column) of the working grid's first pixel
    hu: np.ndarray  # int16 (slices, rows, cols) on the working grid, lightly smoothed
    regions: np.ndarray  # uint8 region codes, same shape
    spacing: tuple[float, float, float]
    wall_mm: float
    aorta_hu: float | None
    midline: np.ndarray  # patient coordinates of the body centroid
    notes: list[str] = field(default_factory=list)
    # Cavity tissue of muscle HU continuous with the wall beyond its local
    # thickness: blood against the wall with no fat plane (same grid as hu).
    wall_lining: np.ndarray | None = field(default=None, repr=False)
    # The contrast phase the images show (pipeline.phase), and on the delayed
    # phase the excreted contrast in the collecting systems and bladder.
    phase: ContrastPhase | None = None
    excreted: np.ndarray | None = field(default=None, repr=False)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def cavity(self) -> np.ndarray:
        """Inside the peritoneal cavity and not bone or aorta."""
        r = self.regions
        return (r >= CAVITY) & (r < AORTA)

    def organ_found(self, organ: str) -> bool:
        return bool(np.any(self.regions == ORGAN_CODES[organ]))

    @property
    def window(self) -> tuple[slice, slice]:
        """The full-resolution rows and columns the working grid covers."""
        (r0, c0), f = self.origin, self.factor
        return slice(r0, r0 + self.hu.shape[1] * f), slice(c0, c0 + self.hu.shape[2] * f)

    def full_position(self, i: float, j: float) -> tuple[float, float]:
        """Full-resolution (row, column) of the centre of working pixel (i, j)."""
        (r0, c0), f = self.origin, self.factor
        return r0 + i * f + (f - 1) / 2, c0 + j * f + (f - 1) / 2

    def full_slice(self, k: float) -> float:
        """Full-resolution slice index of the centre of working slice k."""
        return min(k * self.z_factor + (self.z_factor - 1) / 2, self.slices - 1)

    def full_slices(self, k: int) -> range:
        """The full-resolution slices that working slice k merges."""
        return range(k * self.z_factor, min((k + 1) * self.z_factor, self.slices))

    def patient_point(self, volume: Volume, k: float, i: float, j: float) -> np.ndarray:
        return volume.patient_point(self.full_slice(k), *self.full_position(i, j))

    def full_box(self, mask2d: np.ndarray, full_shape: tuple[int, int], margin: int = 0
                 ) -> tuple[slice, slice]:
        """The full-resolution rows and columns of a working-grid slice's set pixels, and
        margin pixels round them (within the image)."""
        (r0, c0), f = self.origin, self.factor
        box = morphology.bounding_box(mask2d)
        return tuple(slice(max(0, o + s.start * f - margin), min(n, o + s.stop * f + margin))
                     for s, o, n in zip(box, (r0, c0), full_shape))

    def upsample_box(self, map2d: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
        """A working-grid slice (mask or map) at full resolution over box (zero outside the grid)."""
        (r0, c0), f = self.origin, self.factor
        index = [(np.arange(s.start, s.stop) - o) // f for s, o in zip(box, (r0, c0))]
        valid = [(i >= 0) & (i < n) for i, n in zip(index, map2d.shape)]
        rows, cols = (np.clip(i, 0, n - 1) for i, n in zip(index, map2d.shape))
        out = map2d[rows[:, None], cols[None, :]]
        out[~(valid[0][:, None] & valid[1][None, :])] = 0
        return out


def uncertain_boundary(anatomy: Anatomy, box: tuple[slice, ...], component: np.ndarray) -> list[str]:
    """Why a collection's edge (a working-grid component within box) is uncertain.

    Blood has the HU of muscle and of the bowel wall: where it lies against
    them with no fat plane, where it ends was inferred, not seen.
    """
    reasons = []
    if anatomy.wall_lining is not None and np.any(anatomy.wall_lining[box][component]):
        reasons.append("abuts the abdominal wall without a fat plane")
    if np.any(anatomy.regions[box][component] == BOWEL):
        reasons.append("abuts bowel without a fat plane")
    return reasons


def working_factors(volume: Volume, settings: PipelineSettings) -> tuple[int, int]:
    """Full-resolution pixels per working pixel in-plane, and slices per working slice."""
    seg = settings.segmentation
    in_plane = max(1, int(seg.working_pixel_mm / min(volume.spacing[1:]) + 0.5))
    along = max(1, int(seg.working_slice_mm / volume.spacing[0] + 0.5))
    return in_plane, along


def body_window(hu: np.ndarray, factor: int, body_min: float) -> tuple[int, int, int, int]:
    """Origin and size (rows, cols in working pixels) of a grid covering the patient.

    Working on the patient's bounding box instead of the whole field of view
    halves the work on a usual abdomen.
    """
    n, rows, cols = hu.shape
    seen = np.zeros((rows, cols), dtype=bool)
    for k0 in range(0, n, CHUNK_SLICES):
        seen |= hu[k0:k0 + CHUNK_SLICES].max(axis=0) > body_min  # any above it: faster as a max
    if not seen.any():
        return 0, 0, rows // factor, cols // factor
    margin = 2 * factor
    (r0, r1), (c0, c1) = [(max(0, int(a.min()) - margin), int(a.max()) + 1 + margin)
                          for a in np.nonzero(seen)]
    r, c = max(1, (min(rows, r1) - r0) // factor), max(1, (min(cols, c1) - c0) // factor)
    return r0, c0, r, c


def block_mean(hu: np.ndarray, factor: int, z_factor: int, origin: tuple[int, int],
               size: tuple[int, int]) -> np.ndarray:
    """Block means over the window (then a 3x3 mean against noise), as int16.

    Blocks are factor x factor pixels in-plane and z_factor slices deep; the
    last block may hold fewer slices. Strided additions, several times faster
    than reshaping and reducing over the block axes, and the same float32
    numbers: the in-plane sums are exact, the slices are added in order, and
    each mean is divided as numpy's mean divides.
    """
    n = hu.shape[0]
    (r0, c0), (r, c) = origin, size
    out = np.empty((-(-n // z_factor), r, c), dtype=np.int16)
    step = max(1, CHUNK_SLICES // z_factor) * z_factor
    for k0 in range(0, n, step):
        window = hu[k0:k0 + step, r0:r0 + r * factor, c0:c0 + c * factor]
        rows = window[:, ::factor].astype(np.int32)  # exact sums: rows, then columns
        for a in range(1, factor):
            rows += window[:, a::factor]
        plane = rows[:, :, ::factor].copy()
        for b in range(1, factor):
            plane += rows[:, :, b::factor]
        plane = plane.astype(np.float32)  # exact: |sum| < 2**24 for blocks up to 22 x 22
        _mean_of_sums(plane, np.intp(factor * factor))
        merged = plane[::z_factor].copy()
        for z in range(1, z_factor):
            merged[:len(plane[z::z_factor])] += plane[z::z_factor]
        depth = np.full((len(merged), 1, 1), z_factor, dtype=np.intp)
        depth[-1] = len(plane) - (len(merged) - 1) * z_factor
        _mean_of_sums(merged, depth)
        ndimage.uniform_filter(merged, size=(1, 3, 3), output=merged, mode="nearest")
        out[k0 // z_factor:k0 // z_factor + len(merged)] = np.rint(merged)
    return out


def _mean_of_sums(sums: np.ndarray, count: np.ndarray) -> None:
    """float32 sums to means in place, divided in float64 as ndarray.mean divides."""
    np.true_divide(sums, count, out=sums, casting="unsafe")


def build_anatomy(volume: Volume, settings: PipelineSettings) -> Anatomy:
    factor, z_factor = working_factors(volume, settings)
    r0, c0, r, c = body_window(volume.hu, factor, settings.hu.body_min)
    hu = block_mean(volume.hu, factor, z_factor, (r0, c0), (r, c))
    dz, dy, dx = volume.spacing
    spacing = (dz * z_factor, dy * factor, dx * factor)
    anatomy = Anatomy(factor, z_factor, len(volume.hu), (r0, c0), hu, np.zeros(hu.shape, dtype=np.uint8), spacing,
                      settings.segmentation.default_wall_mm, None, np.zeros(3))
    _body_and_cavity(anatomy, settings)
    body = anatomy.regions > OUTSIDE
    if body.any():
        anatomy.midline = _patient_centroid(volume, anatomy, body)
    else:
        anatomy.midline = anatomy.patient_point(volume, *((np.asarray(hu.shape) - 1) / 2))
        anatomy.notes.append("no patient found in the images")
    del body
    _bone_and_aorta(anatomy, settings)
    _organs(volume, anatomy, settings)
    from pipeline.phase import recognise  # late: it reads the anatomy built here

    anatomy.phase, anatomy.excreted = recognise(volume, anatomy, settings)
    return anatomy


# --- body, wall and cavity ---------------------------------------------------

DEPTH_STEP_MM = 0.5  # depth maps are kept as uint8 in these steps (127 mm at most)
WALL_SECTORS = 36  # 10-degree sectors round each slice's body centre
WALL_MAX_MM = 30.0  # no abdominal wall is deeper: beyond, the wall was not seen
WALL_SKIP_PX = 2  # the wall's outer pixels blur into the subcutaneous fat
SKIN_PX = 3  # the skin's pixels blur into the air this far
# A thickness bump (blood against the wall) shorter than twice this along z,
# or narrower than three sectors, is not the wall's.
WALL_CONTINUITY_MM = 60.0
WALL_LINING_PX = 3  # tissue continuous with the wall this far beyond it lies against it


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels connected within each slice only (face connectivity in-plane).

    A stack is labelled as one 2D image, its slices one above the other with a
    blank row between them: several times faster than a 3D structure with
    zeros above and below, and the same scan order, so the same numbering.
    """
    if mask.ndim == 2:
        return ndimage.label(mask)
    n, rows, cols = mask.shape
    padded = np.zeros((n, rows + 1, cols), dtype=bool)
    padded[:, :rows] = mask
    labels, count = ndimage.label(padded.reshape(n * (rows + 1), cols))
    return labels.reshape(n, rows + 1, cols)[:, :rows], count


def _select(labels: np.ndarray, count: int, chosen: np.ndarray) -> np.ndarray:
    lookup = np.zeros(count + 1, dtype=bool)
    lookup[chosen] = True
    lookup[0] = False
    return np.take(lookup, labels)  # faster than lookup[labels]


def label_in_box(mask: np.ndarray) -> tuple[np.ndarray, int, list, np.ndarray]:
    """ndimage.label of a 3D mask (face connectivity), with each label's box and voxel
    count (index 0: the box's background). Labelled over the mask's bounding box
    alone: labels are numbered in scan order, which the box keeps, so they are the
    same."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    box = morphology.bounding_box(mask)
    if box is None:
        return labels, 0, [], np.zeros(1, dtype=np.intp)
    part, count = ndimage.label(mask[box])
    labels[box] = part
    boxes = [tuple(slice(s.start + o.start, s.stop + o.start) for s, o in zip(b, box))
             for b in ndimage.find_objects(part)]
    return labels, count, boxes, np.bincount(part.ravel(), minlength=count + 1)


def fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """Holes filled slice by slice (2D or a stack), by labelling the background once.

    Only over the mask's bounding box: a background pixel on the box's edge lies
    beside one outside it, which reaches the image's edge in a straight line, so
    the holes found are the same."""
    out = mask.copy()
    box = morphology.bounding_box(mask)
    if box is None:
        return out
    part = mask[box]
    labels, count = _label(~part)
    border = np.concatenate([labels[..., [0, -1], :].ravel(), labels[..., :, [0, -1]].ravel()])
    out[box] |= _select(labels, count, np.setdiff1d(np.arange(1, count + 1), border))
    return out


def _largest_per_slice(stack: np.ndarray) -> np.ndarray:
    """The largest in-plane component of each slice (drops the table and cables)."""
    labels, count = _label(stack)
    if count == 0:
        return stack
    sizes = np.bincount(labels.ravel())[1:]
    # Labels are numbered in scan order, so each slice's run after the last one's
    # highest: a label's slice is the first whose highest label reaches it.
    highest = np.maximum.accumulate(labels.reshape(len(labels), -1).max(axis=1))
    slice_of = np.searchsorted(highest, np.arange(1, count + 1))
    order = np.lexsort((sizes, slice_of))  # by slice, then by size
    last_in_slice = np.r_[slice_of[order][1:] != slice_of[order][:-1], True]
    return _select(labels, count, order[last_in_slice] + 1)


def _connected_to(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    labels, count = _label(mask)
    return _select(labels, count, np.unique(labels[seeds & mask]))


def _near_air(body: np.ndarray, radius: int) -> np.ndarray:
    """Body pixels within radius pixels (Euclidean) of a pixel outside the body, slice by
    slice: what a disk erosion takes off, as a distance transform would find them."""
    near = body & ~morphology.erode_disk(body, radius)
    # A slice that is all body has no pixel to measure from: there, what the
    # distance transform makes of it, as before.
    for k in np.flatnonzero(body.all(axis=(1, 2))):
        near[k] = ndimage.distance_transform_edt(body[k]) <= radius
    return near


def _layers(hu: np.ndarray, settings: PipelineSettings, in_plane: tuple[float, float]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body, fat and the region below the subcutaneous fat, for a stack of slices."""
    body = _largest_per_slice(fill_holes_2d(hu > settings.hu.body_min))
    fat = (hu >= settings.hu.fat_min) & (hu <= settings.hu.fat_max) & body
    # Within 3 pixels of the air: the skin, blurred into the air. Euclidean, so
    # that the band is as deep on oblique edges (where a thin patient's wall
    # begins within it, and the wall's depth is measured from its inner edge).
    skin = _near_air(body, SKIN_PX)
    inner = _largest_per_slice(fill_holes_2d(body & ~_connected_to(fat, skin) & ~skin))
    return body, fat, inner


def _body_and_cavity(anatomy: Anatomy, settings: PipelineSettings) -> None:
    hu, regions = anatomy.hu, anatomy.regions
    in_plane = anatomy.spacing[1:]
    skip = WALL_SKIP_PX * min(in_plane)
    depth = np.empty(hu.shape, dtype=np.uint8)
    sectors = np.empty(hu.shape, dtype=np.uint8)
    walled = np.empty(hu.shape, dtype=bool)  # muscle-HU tissue continuous with the wall
    surface = np.full((len(hu), WALL_SECTORS), np.inf, dtype=np.float32)
    for k0 in range(0, len(hu), CHUNK_SLICES):
        chunk = hu[k0:k0 + CHUNK_SLICES]
        body, _, inner = _layers(chunk, settings, in_plane)
        regions[k0:k0 + CHUNK_SLICES][body] = BODY_WALL
        d = np.stack([ndimage.distance_transform_edt(m, sampling=in_plane) for m in inner])
        depth[k0:k0 + len(d)] = np.minimum(np.rint(d / DEPTH_STEP_MM), 255)
        # Muscle and blood share these HU; fat, fluid or gas beneath mark the wall's end.
        muscle = inner & (chunk >= settings.hu.blood_min) & (chunk < settings.hu.parenchyma_min)
        wall = _connected_to(muscle & (d <= WALL_MAX_MM), muscle & (d <= skip + min(in_plane)))
        walled[k0:k0 + len(d)] = wall
        # The wall ends where a pixel is more what lies beneath (fat, fluid, gas:
        # the darkest within 2 pixels) than muscle: halfway between their HU.
        beneath = morphology.min_filter(chunk, (1, 5, 5))
        wall_hu = float(np.median(chunk[wall])) if wall.any() else settings.hu.blood_min
        inner_surface = (inner & (beneath < settings.hu.blood_min) & (d > skip) & (d <= WALL_MAX_MM)
                         & morphology.dilate(wall, morphology.in_plane(2)))
        # The HU test last, on the few pixels left (no float copies of the chunk).
        inner_surface[inner_surface] = (2 * chunk[inner_surface].astype(np.float32)
                                        < wall_hu + beneath[inner_surface])
        for n in range(len(d)):
            sectors[k0 + n] = _sector_map(body[n], in_plane)
            surface[k0 + n] = _sector_medians(sectors[k0 + n][inner_surface[n]], d[n][inner_surface[n]])
    seen = np.isfinite(surface)
    if seen.any():  # the series' typical wall where a sector's end was not seen
        anatomy.wall_mm = float(np.median(surface[seen]))
    else:
        anatomy.notes.append("abdominal wall not measured: default thickness used")
    local = _local_wall(np.where(seen, surface, anatomy.wall_mm), anatomy.spacing[0])
    # The wall is what is continuous with it down to the local thickness; all
    # else below the skin's blurred edge is the cavity (fat, organs, and blood
    # inward of the wall even with no fat plane between them). The surface
    # pixel is the first past the wall: its edge lies half a pixel before.
    steps = np.clip(np.rint((local - in_plane[0] / 2) / DEPTH_STEP_MM), 0, 255).astype(np.uint8)
    cut = steps[np.arange(len(hu))[:, None, None], sectors]
    del sectors
    inside = (regions == BODY_WALL) & (depth > round(skip / DEPTH_STEP_MM))
    regions[inside & ~(walled & (depth < cut))] = CAVITY
    lining = walled & (regions == CAVITY) & (depth < cut.astype(np.int16)
                                             + round(WALL_LINING_PX * in_plane[0] / DEPTH_STEP_MM))
    anatomy.wall_lining = lining if lining.any() else None


def _sector_medians(sector: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The median of values in each sector (inf where a sector has none)."""
    out = np.full(WALL_SECTORS, np.inf, dtype=np.float32)
    if not len(values):
        return out
    order = np.lexsort((values, sector))
    counts = np.bincount(sector, minlength=WALL_SECTORS)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    has = counts > 0
    out[has] = values[order][starts[has] + counts[has] // 2]
    return out


def _sector_map(body: np.ndarray, in_plane: tuple[float, float]) -> np.ndarray:
    """Each pixel's angular sector round the body's centre (uint8)."""
    if not body.any():
        return np.zeros(body.shape, dtype=np.uint8)
    ci, cj = centre_of_mass(body)
    i, j = np.ogrid[:body.shape[0], :body.shape[1]]
    angle = np.arctan2((i - ci) * in_plane[0], (j - cj) * in_plane[1])
    return (np.floor((angle + np.pi) / (2 * np.pi) * WALL_SECTORS).astype(np.int32) % WALL_SECTORS).astype(np.uint8)


def _local_wall(surface: np.ndarray, slice_mm: float) -> np.ndarray:
    """The wall's thickness per slice and sector, free of what lies against it.

    A grey opening (min then max filter) keeps the thickness where it varies
    slowly and takes off bumps shorter along z or narrower than the window:
    blood against the wall, its inner surface read as the wall's.
    """
    size = (2 * round(WALL_CONTINUITY_MM / slice_mm) + 1, 3)
    modes = ("nearest", "wrap")  # sectors go round
    low = ndimage.minimum_filter(np.minimum(surface, WALL_MAX_MM), size=size, mode=modes)
    return ndimage.maximum_filter(low, size=size, mode=modes)


# --- bone, aorta, organs -------------------------------------------------------

def _bone_and_aorta(anatomy: Anatomy, settings: PipelineSettings) -> None:
    hu, regions = anatomy.hu, anatomy.regions
    vessel = (regions == CAVITY) & (hu >= settings.hu.vessel_min) & (hu < settings.hu.bone_min)
    labels, _, boxes, sizes = label_in_box(vessel)
    best, best_span = 0, 0
    pixel_area = anatomy.spacing[1] * anatomy.spacing[2]
    for index, box in enumerate(boxes, start=1):
        span = box[0].stop - box[0].start
        voxels = int(sizes[index])
        if span > best_span and voxels * pixel_area / span <= AORTA_MAX_AREA_MM2:
            best, best_span = index, span
    if best and best_span >= max(3, 0.3 * len(hu)):
        aorta = labels == best
        anatomy.aorta_hu = float(np.median(hu[aorta]))
        regions[aorta] = AORTA
    else:
        anatomy.notes.append("aorta not found")
    del labels, vessel
    bone = (regions > OUTSIDE) & (hu >= settings.hu.bone_min)
    regions[morphology.dilate(bone, morphology.in_plane(1))] = BONE


def _patient_centroid(volume: Volume, anatomy: Anatomy, mask: np.ndarray) -> np.ndarray:
    return anatomy.patient_point(volume, *centre_of_mass(mask))


def centre_of_mass(mask: np.ndarray) -> tuple[float, ...]:
    """ndimage.center_of_mass of a non-empty mask, to the bit, several times faster.

    scipy sums index times mask in float64 (exact for integers this small) and
    divides by the count; here the same sums are taken exactly in integers, from
    the count of set voxels at each index, without scipy's full-size float copies.
    """
    count = np.count_nonzero(mask)
    centre = []
    for axis in range(mask.ndim):
        per_index = np.count_nonzero(mask, axis=tuple(a for a in range(mask.ndim) if a != axis))
        centre.append(float(per_index.astype(np.int64) @ np.arange(len(per_index), dtype=np.int64)) / count)
    return tuple(centre)


@dataclass
class _Component:
    voxels: int
    centroid: np.ndarray  # patient coordinates
    box: tuple[slice, ...]
    index: int


def _components(volume: Volume, anatomy: Anatomy, mask: np.ndarray, min_voxels: int
                ) -> tuple[np.ndarray, list[_Component]]:
    """Labelled components with at least min_voxels, with their patient centroids."""
    labels, count, boxes, sizes = label_in_box(mask)
    keep = [n for n in range(1, count + 1) if sizes[n] >= min_voxels]
    found = []
    for n in keep:
        box = boxes[n - 1]
        centre = np.asarray(centre_of_mass(labels[box] == n)) + [s.start for s in box]
        found.append(_Component(int(sizes[n]), anatomy.patient_point(volume, *centre), box, n))
    return labels, found


def _paint(regions: np.ndarray, labels: np.ndarray, component: _Component, code: int,
           unopened: np.ndarray | None = None) -> None:
    """Paint a component, its in-plane holes filled (a hematoma or blush inside it).

    unopened: the mask before an in-plane opening of one pixel; the component
    gets back the edge pixels the opening took (one pixel of it), not what lay
    beyond a neck it cut.
    """
    box = component.box
    if unopened is not None:
        box = tuple(slice(s.start, s.stop) for s in box[:1]) + tuple(
            slice(max(0, s.start - 1), min(n, s.stop + 1)) for s, n in zip(box[1:], labels.shape[1:]))
    mask = labels[box] == component.index
    if unopened is not None:
        mask = morphology.dilate(mask, morphology.in_plane(1)) & unopened[box]
    filled = fill_holes_2d(mask)
    target = regions[box]
    target[filled & (target < AORTA)] = code


def _organ_span(labels: np.ndarray, component: _Component) -> _Component:
    """The component cut to the slices of the organ's body: from its largest
    cross-section outwards, up to where the area falls under ORGAN_TAPER_SHARE of
    it (a tubular vessel carried on along z beyond the organ's pole is left out)."""
    box = component.box
    area = np.count_nonzero(labels[box] == component.index, axis=(1, 2))
    peak = int(np.argmax(area))
    small = area < ORGAN_TAPER_SHARE * area[peak]
    first = peak - int(np.argmax(small[peak::-1])) + 1 if small[:peak].any() else 0
    last = peak + int(np.argmax(small[peak:])) if small[peak:].any() else len(area)
    if first == 0 and last == len(area):
        return component
    z = slice(box[0].start + first, box[0].start + last)
    return _Component(int(area[first:last].sum()), component.centroid, (z,) + box[1:], component.index)


def _organs(volume: Volume, anatomy: Anatomy, settings: PipelineSettings) -> None:
    hu, regions = anatomy.hu, anatomy.regions
    voxel_ml = anatomy.voxel_volume_mm3 / 1000.0
    cavity = regions == CAVITY
    is_left = lambda c: c[0] > anatomy.midline[0]  # noqa: E731  LPS: +x is patient left
    is_posterior = lambda c: c[1] > anatomy.midline[1]  # noqa: E731  LPS: +y is posterior

    # Gas-filled loops, with their wall, are bowel.
    gas_labels, gas = _components(volume, anatomy, cavity & (hu < settings.hu.body_min),
                                  max(1, int(0.5 / voxel_ml)))
    if gas:
        loops = np.isin(gas_labels, [c.index for c in gas])
        reach = max(1, int(round(BOWEL_WALL_MM / anatomy.spacing[1])))
        regions[cavity & morphology.dilate(loops, morphology.in_plane(reach))] = BOWEL
    del gas_labels

    parenchyma = cavity & (hu >= settings.hu.parenchyma_min) & (hu < settings.hu.parenchyma_max)
    parenchyma = morphology.open_(parenchyma, morphology.in_plane(1))
    labels, found = _components(volume, anatomy, parenchyma, int(ORGAN_MIN_ML["spleen"] / voxel_ml))
    right = [c for c in found if not is_left(c.centroid) and c.voxels * voxel_ml >= ORGAN_MIN_ML["liver"]]
    left = [c for c in found if is_left(c.centroid)]
    for candidates, code in ((right, LIVER), (left, SPLEEN)):
        if candidates:
            _paint(regions, labels, _organ_span(labels, max(candidates, key=lambda c: c.voxels)), code)

    enhancing = cavity & (hu >= settings.hu.vessel_min) & (hu < settings.hu.bone_min)
    # Opened like the parenchyma: a blush or vessel beside a kidney, joined to it by
    # a neck of blurred pixels, is not the kidney.
    labels, found = _components(volume, anatomy, morphology.open_(enhancing, morphology.in_plane(1)),
                                int(ORGAN_MIN_ML["kidney"] / voxel_ml))
    kidneys = [c for c in found if c.voxels * voxel_ml <= KIDNEY_MAX_ML and is_posterior(c.centroid)]
    for side_is_left, code in ((False, KIDNEY_RIGHT), (True, KIDNEY_LEFT)):
        side = [c for c in kidneys if is_left(c.centroid) == side_is_left]
        if side:
            _paint(regions, labels, max(side, key=lambda c: c.voxels), code, unopened=enhancing)
    for organ in ORGAN_CODES:
        if not anatomy.organ_found(organ):
            anatomy.notes.append(f"{organ.replace('_', ' ')} not located by the HU baseline")
