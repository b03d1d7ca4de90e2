"""The contrast foci (blushes) of a label volume: where each lies, how big, how dense.

A focus is a connected piece of the active-extravasation (or contained
vascular injury) label at full resolution. Its mean HU against the same
series' aorta, its size and position are what a later phase is compared with
(pipeline.multiphase) to tell active bleeding from a contained vascular injury.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.findings import ContrastFocus
from pipeline.labels import ACTIVE_EXTRAVASATION, CONTAINED_VASCULAR_INJURY
from pipeline.morphology import bounding_box
from pipeline.volume import Volume

CONTRAST_LABELS = (ACTIVE_EXTRAVASATION, CONTAINED_VASCULAR_INJURY)


class FocusMap:
    """The foci of one label volume, labelled over the bounding box of the contrast labels
    (the numbering is the same as over the whole volume: the box keeps the scan order)."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels
        box = bounding_box(labels)
        contrast = np.isin(labels[box], CONTRAST_LABELS) if box else np.zeros((0, 0, 0), dtype=bool)
        inner = bounding_box(contrast)
        if inner is None:
            self.ids, self.count, self.offset = np.zeros((0, 0, 0), dtype=np.int32), 0, np.zeros(3, dtype=int)
            return
        self.offset = np.array([s.start + t.start for s, t in zip(box, inner)])
        self.ids, self.count = ndimage.label(contrast[inner], structure=np.ones((3, 3, 3), bool))

    def _full(self, box: tuple[slice, ...]) -> tuple[slice, ...]:
        """A box of ids in full-resolution voxels."""
        return tuple(slice(s.start + o, s.stop + o) for s, o in zip(box, self.offset))

    def describe(self, volume: Volume, aorta_hu: float | None,
                 compartment_at: "callable") -> list[ContrastFocus]:
        """One record per focus, the largest first; compartment_at(k, i, j) names where it lies."""
        foci: list[ContrastFocus] = []
        if not self.count:
            return foci
        voxel_ml = volume.voxel_volume_mm3 / 1000.0
        for index, box in enumerate(ndimage.find_objects(self.ids), start=1):
            inside = self.ids[box] == index
            full = self._full(box)
            centre = np.asarray(ndimage.center_of_mass(inside))
            # k counted from the first slice with contrast, then that slice added: the
            # same floating-point sums as when the ids spanned whole slices.
            k, i, j = centre + [box[0].start, full[1].start, full[2].start]
            k += self.offset[0]
            points = np.argwhere(inside)
            nearest = points[np.argmin(((points - centre) ** 2).sum(axis=1))] + [s.start for s in full]
            extent = max((s.stop - s.start) * d for s, d in zip(box, volume.spacing))
            foci.append(ContrastFocus(
                id=index, volume_ml=round(float(inside.sum()) * voxel_ml, 3),
                mean_hu=round(float(volume.hu[full][inside].mean()), 1),
                aorta_hu=None if aorta_hu is None else round(float(aorta_hu), 1),
                centroid_mm=[round(float(v), 1) for v in volume.patient_point(k, i, j)],
                max_extent_mm=round(float(extent), 1),
                compartment=compartment_at(k, i, j),
                voxel=[int(v) for v in nearest]))
        return sorted(foci, key=lambda f: -f.volume_ml)

    def relabel(self, focus_id: int, value: int) -> None:
        """Give every voxel of one focus another label (e.g. contained vascular injury)."""
        box = ndimage.find_objects(self.ids)[focus_id - 1]
        self.labels[self._full(box)][self.ids[box] == focus_id] = value
