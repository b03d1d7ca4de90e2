"""Active extravasation in the embedded baseline: the attenuation it has, and what it is not.

The rule table (thresholds in pipeline/settings.py, HuSettings and
SegmentationSettings, where their sources are given):

| test | a contrast focus is extravasation when | why |
| --- | --- | --- |
| attenuation | at least `hu.blush_min` (85 HU) | the lowest extravasation measured, above every clot (Shanmuganathan 1993: 85-370 HU, clot 40-70 HU); it often enhances 40-70 HU less than the aorta (Willmann 2002), so the aorta sets no floor |
| in an enhancing organ | above the organ's own parenchyma round it (90th percentile of a ring three to four working pixels out) + `hu.blush_organ_margin` | the parenchyma enhances into the same range, and unevenly (an arterial-phase renal cortex against its medulla): the reference is what surrounds the focus, not the organ as a whole |
| too dense | its core no denser than `hu.blush_max` (400 HU) and the blood pool (aorta, portal vein where found) + `hu.blush_above_pool`; nothing denser within two working pixels unless it lies in a hematoma | calcification and bone (a calcified granuloma's blurred rim), dense oral or excreted contrast |
| bowel | not continuous with gas or gas-filled bowel | positive oral contrast in the lumen |
| vessel or lumen | not continuous, at a threshold halfway to the organ's, over more than `segmentation.max_blush_length_mm` | vessels (portal, splenic veins, IVC, mesenteric) and contrast-filled bowel are long; a blush is focal |
| excreted | on the delayed phase (pipeline.phase), not touching a kidney or the excreted contrast of the collecting systems and bladder | excreted contrast; a urine leak looks the same and is not called extravasation |
| outside organs | inside a hematoma, or a compact focus away from the aorta | a focus in clean fat with no blood round it is a vessel seen end-on |

Each focus kept is redrawn at full resolution at its half maximum: halfway
between its core and what surrounds it (never below `hu.blood_max`), so
that its volume follows its edge rather than a fixed threshold; where a focus
outside an organ lies against it, halfway between its core and the organ's
parenchyma there.

Foci are sought on the working grid: outside organs from halfway between the
clot range and the floor, in an organ and one working voxel round it from the
organ's local mean (over ORGAN_WINDOW_MM) plus the margin, so that a focus
denser than the parenchyma round it is seen in an organ that enhances as much
as a blush elsewhere (a 150 HU blush in a 120 HU spleen).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from pipeline import morphology
from pipeline.anatomy import AORTA, BOWEL, KIDNEY_LEFT, KIDNEY_RIGHT, OUTSIDE, SOLID_CODES, Anatomy
from pipeline.phase import DELAYED, UNENHANCED, excretion_level
from pipeline.settings import PipelineSettings
from pipeline.volume import Volume

SHELL_BLOOD_FRACTION = 0.5  # a focus outside organs must sit in a hematoma...
COMPACT_MAX_MM = 30.0  # ...or be a compact blob: a vessel runs longer than this,
COMPACT_MAX_RATIO = 3.0
COMPACT_MIN_MM = 6.0  # and partial volume in an organ's hilum or fold is narrower
CORE_PERCENTILE = 90  # a focus's core HU: robust to noise, not to its blurred edge
ORGAN_WINDOW_MM = 30.0  # an organ's local mean is taken over this (in-plane, 3 working slices)
MIN_RING_VOXELS = 8  # fewer organ voxels round a focus: the organ's own 90th percentile instead


@dataclass
class BlushRule:
    """The attenuation limits of extravasation on this series."""

    floor: float
    ceiling: float
    organ_levels: dict[int, float]  # region code -> that organ's 90th percentile HU (the whole organ)
    margin: float  # above the organ's parenchyma round a focus in it
    phase: str
    pool: dict[str, float] = field(default_factory=dict)  # the blood pool it is measured against
    excreted: float | None = None  # on the delayed phase: denser than this is excreted contrast

    def required(self, parenchyma: float) -> float:
        """The core a focus in an organ needs, parenchyma being the organ's HU round it."""
        return max(self.floor, parenchyma + self.margin)

    def describe(self) -> str:
        pool = ", ".join(f"{name} {hu:.0f} HU" for name, hu in self.pool.items()) or "no aorta found"
        return (f"blush: at least {self.floor:g} HU ({self.margin:g} HU above an organ's parenchyma round it), "
                f"core at most {self.ceiling:g} HU; {self.phase.replace('_', '-')} phase, {pool}")


@dataclass
class Blush:
    """Foci kept (working grid), the full-resolution threshold around each, and what was set aside."""

    mask: np.ndarray
    threshold: np.ndarray  # int16; 0 where no focus is redrawn
    notes: list[str]


def blush_rule(anatomy: Anatomy, settings: PipelineSettings) -> BlushRule | None:
    """None on an unenhanced series: without intravenous contrast nothing extravasates."""
    hu_s = settings.hu
    phase = anatomy.phase.name if anatomy.phase else "undetermined"
    if phase == UNENHANCED:
        return None
    measured = anatomy.phase.measured if anatomy.phase else {}
    portal = measured.get("portal_vein_hu")
    pool = {name: hu for name, hu in (("aorta", anatomy.aorta_hu), ("portal vein", portal)) if hu is not None}
    floor = hu_s.blush_min if anatomy.aorta_hu is not None else hu_s.blush_fallback_min
    ceiling = max(hu_s.blush_max, max(pool.values(), default=0.0) + hu_s.blush_above_pool)
    levels = {}
    for code in SOLID_CODES:
        organ = anatomy.regions == code
        if organ.any():
            levels[code] = float(np.percentile(anatomy.hu[organ], 90))
    excreted = excretion_level(*pool.values(), measured.get("kidney_cortex_hu")) if phase == DELAYED else None
    return BlushRule(floor, ceiling, levels, hu_s.blush_organ_margin, phase, pool, excreted)


def find_blush(volume: Volume, anatomy: Anatomy, settings: PipelineSettings, blood_range: np.ndarray) -> Blush:
    hu = anatomy.hu
    rule = blush_rule(anatomy, settings)
    empty = Blush(np.zeros(hu.shape, dtype=bool), np.zeros(hu.shape, dtype=np.int16), [])
    if rule is None:
        empty.notes.append("no blush sought: no intravenous contrast (unenhanced series)")
        return empty
    # Each organ with its blurred edge: a working voxel beyond its outline, its poles too,
    # and the organ's local mean there.
    bands, local = _organ_bands(anatomy, rule)
    # On the blurred working grid a focus is sought from halfway between the clot range
    # and the floor (its core is then checked at full resolution), in an organ's band
    # from the organ's local mean plus the margin; halfway down from there (in a band,
    # half the margin) is what joins a focus to the vessel, ureter or bowel it belongs to.
    # Neither runs through the organ's own parenchyma (up to its 90th percentile and half
    # the margin): an arterial-phase renal cortex is no lumen joining a focus to a vessel.
    base = (rule.floor + settings.hu.blood_max) / 2
    in_band = bands > 0
    own = np.zeros(256, dtype=np.float32)
    for code, level in rule.organ_levels.items():
        own[code] = level + rule.margin / 2
    own = own[bands[in_band]]
    seek = np.full(hu.shape, base, dtype=np.float32)
    link = seek.copy()
    link[in_band] = np.maximum(np.maximum(base, own), local[in_band] + rule.margin / 2)
    seek[in_band] = np.maximum(link[in_band], local[in_band] + rule.margin)
    del local, own
    below_bone = (hu < settings.hu.bone_min) & anatomy.cavity()
    # A focus is at least two working pixels across: a one-pixel sliver at an organ's edge is not.
    bright = below_bone & (hu >= seek)
    bright = morphology.reconstruct(morphology.open_(bright, (1, 2, 2)), bright)
    linked = below_bone & (hu >= link)
    del seek, link
    found = _Foci(volume, anatomy, settings, rule, blood_range, bands)
    groups, _ = ndimage.label(linked)
    labels, _ = ndimage.label(bright)
    boxes = ndimage.find_objects(labels)
    group_boxes = ndimage.find_objects(groups)
    verdicts: dict[int, str | None] = {}
    for index, box in enumerate(boxes, start=1):
        if box is None:
            continue
        group = int(groups[box][labels[box] == index][0])
        if group not in verdicts:
            verdicts[group] = found.group_verdict(groups, group, group_boxes[group - 1])
        found.consider(labels, index, box, verdicts[group])
    return Blush(found.mask, found.threshold, [rule.describe()] + found.summary())


def _organ_bands(anatomy: Anatomy, rule: BlushRule) -> tuple[np.ndarray, np.ndarray]:
    """Each organ's band (its code, one working voxel beyond its outline) and there the
    mean HU of the organ's parenchyma within ORGAN_WINDOW_MM in-plane and a working slice
    either side (float32; zero elsewhere). Its brightest tenth is left out of the mean:
    a focus in it, or a vessel through it (an intrahepatic IVC), is not parenchyma."""
    regions, hu = anatomy.regions, anatomy.hu
    bands = np.zeros(hu.shape, dtype=np.uint8)
    local = np.zeros(hu.shape, dtype=np.float32)
    half = max(1, int(round(ORGAN_WINDOW_MM / 2 / anatomy.spacing[1])))
    for code in rule.organ_levels:
        organ = regions == code
        box = morphology.grow_box(morphology.bounding_box(organ), (1, half, half), hu.shape)
        inside = (organ[box] & (hu[box] <= rule.organ_levels[code])).astype(np.float32)
        size = (3, 2 * half + 1, 2 * half + 1)
        total = ndimage.uniform_filter(hu[box] * inside, size=size, mode="constant")
        count = ndimage.uniform_filter(inside, size=size, mode="constant")
        band = morphology.dilate(organ[box], (3, 3, 3))
        bands[box][band] = code
        local[box][band] = total[band] / np.maximum(count[band], 1e-6)
    return bands, local


class _Foci:
    """Each candidate's verdict; the kept foci and their thresholds."""

    def __init__(self, volume: Volume, anatomy: Anatomy, settings: PipelineSettings, rule: BlushRule,
                 blood_range: np.ndarray, bands: np.ndarray) -> None:
        self.volume, self.anatomy, self.settings, self.rule = volume, anatomy, settings, rule
        self.blood_range, self.bands = blood_range, bands  # bands: the organ code of each organ's band
        regions, hu = anatomy.regions, anatomy.hu
        self.solid = np.isin(regions, SOLID_CODES)
        self.bowel = (regions == BOWEL) | ((regions > OUTSIDE) & (hu < settings.hu.body_min))
        self.excreted = None
        if rule.phase == DELAYED:
            self.excreted = np.isin(regions, (KIDNEY_LEFT, KIDNEY_RIGHT))
            if anatomy.excreted is not None:
                self.excreted |= anatomy.excreted
        self.mask = np.zeros(hu.shape, dtype=bool)
        self.threshold = np.zeros(hu.shape, dtype=np.int16)
        self.set_aside: dict[str, float] = {}
        self.voxel_ml = anatomy.voxel_volume_mm3 / 1000.0

    def group_verdict(self, groups: np.ndarray, group: int, box: tuple[slice, ...]) -> str | None:
        """Why a connected stretch of contrast is not extravasation (None: it may hold some)."""
        grown = morphology.grow_box(box, (1, 1, 1), groups.shape)
        inside = groups[grown] == group
        touching = morphology.dilate(inside, (3, 3, 3))
        if np.any(self.bowel[grown][touching]):
            return "bowel lumen (oral contrast)"
        if self.excreted is not None and np.any(self.excreted[grown][touching]):
            return "excreted contrast (delayed phase)"
        length = max((s.stop - s.start) * d for s, d in zip(box, self.anatomy.spacing))
        if length > self.settings.segmentation.max_blush_length_mm:
            return "vessel or bowel lumen (longer than a focal blush)"
        return None

    def consider(self, labels: np.ndarray, index: int, box: tuple[slice, ...], verdict: str | None) -> None:
        seg = self.settings.segmentation
        grown = morphology.grow_box(box, (1, 4, 4), labels.shape)
        focus = labels[grown] == index
        ml = float(focus.sum()) * self.voxel_ml
        if not seg.min_blush_ml <= ml <= seg.max_blush_ml:
            return  # noise, or an organ or vessel, not a focus
        organ = self._organ(grown, focus)
        inside = organ is not None
        hematoma = self._in_hematoma(grown, focus)
        if verdict is None and not inside and not hematoma and not self._compact_and_apart(grown, focus):
            verdict = "not in a hematoma and not a compact focus"
        core = peak = 0.0
        if verdict is None:
            core, peak = self._core_and_peak(grown, focus)
            required = self.rule.required(self._parenchyma(grown, focus, organ)) if inside else self.rule.floor
            if core > self.rule.ceiling:
                verdict = "denser than extravasated contrast (calcification, bone or dense contrast)"
            elif self.rule.excreted is not None and core > self.rule.excreted and not hematoma:
                verdict = "excreted contrast (delayed phase)"  # a ureter, no hematoma round it
            elif peak > self.rule.ceiling and not hematoma:
                verdict = "beside calcification or bone, no hematoma round it"
            elif core < required:
                return  # fainter than extravasation (or than the organ round it): not a focus
        if verdict is not None:
            self.set_aside[verdict] = self.set_aside.get(verdict, 0.0) + ml
            return
        surround = self._surround(grown, focus)
        self.mask[grown] |= focus
        # Its edge at half maximum between its core and its surroundings, never in the clot range.
        edge = max(self.settings.hu.blood_max, (core + surround) / 2)
        near = morphology.dilate(focus, (3, 3, 3))  # the working grid's blur made it larger already
        edges = np.full(focus.shape, edge, dtype=np.float32)
        # Where it abuts an organ (in it, or within two working pixels of it: the organ's
        # blurred edge), halfway to the organ's parenchyma, which enhances into the focus's
        # own range, and on its own working slices only (a slice beyond, that threshold lies
        # in the organ's noise).
        in_plane = morphology.dilate(focus, (1, 3, 3))
        for code in ([organ] if inside else [int(c) for c in np.unique(self.bands[grown][near]) if c]):
            against = (np.ones(focus.shape, dtype=bool) if inside
                       else morphology.dilate(self.anatomy.regions[grown] == code, (3, 5, 5)))
            edges[against] = max(edge, (core + self._parenchyma(grown, focus, code)) / 2)
            near &= in_plane | ~against
        target = self.threshold[grown]
        edges = np.rint(edges).astype(np.int16)
        update = near & ((target == 0) | (target > edges))
        target[update] = edges[update]

    def summary(self) -> list[str]:
        return [f"contrast-density structures not called extravasation: {why} ({ml:.1f} mL)"
                for why, ml in sorted(self.set_aside.items())]

    def _organ(self, box: tuple[slice, ...], focus: np.ndarray) -> int | None:
        """The organ a focus lies in, or is walled in by (a kidney's medulla or sinus open at
        its hilum, outside the kidney's outline on the working grid): its level applies."""
        regions, bands = self.anatomy.regions[box], self.bands[box]
        ring = morphology.dilate(focus, (1, 5, 5)) & ~focus
        for code in self.rule.organ_levels:
            if (regions[focus] == code).mean() >= 0.5 or (bands[ring] == code).mean() >= 0.5:
                return code
        return None

    def _parenchyma(self, box: tuple[slice, ...], focus: np.ndarray, organ: int) -> float:
        """The organ's HU round a focus: the 90th percentile of its voxels three to four
        working pixels out (nearer is the focus's own blur; the 90th percentile so that an
        unevenly enhancing organ, a renal cortex against its medulla, is read by its brightest
        part), or the whole organ's where too few are there."""
        ring = morphology.dilate(focus, (3, 9, 9)) & ~morphology.dilate(focus, (3, 5, 5))
        ring &= self.anatomy.regions[box] == organ
        ring &= ~self.blood_range[box]
        if np.count_nonzero(ring) < MIN_RING_VOXELS:
            return self.rule.organ_levels[organ]
        return float(np.percentile(self.anatomy.hu[box][ring], CORE_PERCENTILE))

    def _in_hematoma(self, box: tuple[slice, ...], focus: np.ndarray) -> bool:
        # A ring three working pixels out: nearer ones are the focus's own blur.
        shell = (morphology.dilate(focus, (3, 7, 7)) & ~morphology.dilate(focus, (3, 5, 5)) & ~self.solid[box])
        return bool(shell.any()) and float(self.blood_range[box][shell].mean()) >= SHELL_BLOOD_FRACTION

    def _compact_and_apart(self, box: tuple[slice, ...], focus: np.ndarray) -> bool:
        spacing = self.anatomy.spacing
        extents = [span * d for span, d in zip(_spans(focus), spacing)]
        compact = (COMPACT_MIN_MM <= min(extents[1:]) and max(extents) <= COMPACT_MAX_MM
                   and max(extents) <= COMPACT_MAX_RATIO * max(min(extents), spacing[0]))
        touches_aorta = bool(np.any(self.anatomy.regions[box][morphology.dilate(focus, (3, 5, 5))] == AORTA))
        return compact and not touches_aorta

    def _surround(self, box: tuple[slice, ...], focus: np.ndarray) -> float:
        """Median working HU three to four pixels out (nearer is its own blur): hematoma, fat or organ."""
        regions, hu = self.anatomy.regions[box], self.anatomy.hu[box]
        ring = morphology.dilate(focus, (1, 9, 9)) & ~morphology.dilate(focus, (1, 7, 7))
        ring &= (regions > OUTSIDE) & (regions != AORTA) & (hu < self.settings.hu.bone_min)
        return float(np.median(hu[ring])) if ring.any() else self.settings.hu.blood_max

    def _core_and_peak(self, box: tuple[slice, ...], focus: np.ndarray) -> tuple[float, float]:
        """The focus's core HU and the densest HU within two working pixels, at full
        resolution (3x3 median: one noisy voxel is neither)."""
        anatomy, hu = self.anatomy, self.volume.hu
        f, (r0, c0) = anatomy.factor, anatomy.origin
        near = morphology.dilate(focus, (3, 5, 5))  # a calcification's core may lie in the next slice
        rows = slice(r0 + box[1].start * f, r0 + box[1].stop * f)
        cols = slice(c0 + box[2].start * f, c0 + box[2].stop * f)
        up = lambda m: np.repeat(np.repeat(m, f, axis=0), f, axis=1)  # noqa: E731
        values, peak = [], -np.inf
        for n, k in enumerate(range(box[0].start, box[0].stop)):
            if not near[n].any():
                continue
            inner, around = up(focus[n]), up(near[n])
            for full in anatomy.full_slices(k):
                smooth = ndimage.median_filter(hu[full, rows, cols], size=3)
                values.append(smooth[inner])
                peak = max(peak, float(smooth[around].max()))
        return float(np.percentile(np.concatenate(values), CORE_PERCENTILE)), peak


def _spans(mask: np.ndarray) -> list[int]:
    return [int(np.ptp(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))))) + 1
            for axis in range(3)]
