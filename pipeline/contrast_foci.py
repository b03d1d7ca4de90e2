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
from pipeline.volume import Volume

CONTRAST_LABELS = (ACTIVE_EXTRAVASATION, CONTAINED_VASCULAR_INJURY)


class FocusMap:
    """The foci of one label volume, labelled over the slices that hold any."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels
        slices = np.flatnonzero(np.isin(labels, CONTRAST_LABELS).reshape(len(labels), -1).any(axis=1))
        self.first = int(slices[0]) if slices.size else 0
        if not slices.size:
            self.ids, self.count = np.zeros((0,) + labels.shape[1:], dtype=np.int32), 0
            return
        self.ids, self.count = ndimage.label(np.isin(labels[self.first:int(slices[-1]) + 1], CONTRAST_LABELS),
                                             structure=np.ones((3, 3, 3), bool))

    def describe(self, volume: Volume, aorta_hu: float | None,
                 compartment_at: "callable") -> list[ContrastFocus]:
        """One record per focus, the largest first; compartment_at(k, i, j) names where it lies."""
        foci: list[ContrastFocus] = []
        if not self.count:
            return foci
        voxel_ml = volume.voxel_volume_mm3 / 1000.0
        hu = volume.hu[self.first:self.first + len(self.ids)]
        for index, box in enumerate(ndimage.find_objects(self.ids), start=1):
            inside = self.ids[box] == index
            centre = np.asarray(ndimage.center_of_mass(inside))
            k, i, j = centre + [s.start for s in box]
            points = np.argwhere(inside)
            nearest = points[np.argmin(((points - centre) ** 2).sum(axis=1))] + [s.start for s in box]
            extent = max((s.stop - s.start) * d for s, d in zip(box, volume.spacing))
            foci.append(ContrastFocus(
                id=index, volume_ml=round(float(inside.sum()) * voxel_ml, 3),
                mean_hu=round(float(hu[box][inside].mean()), 1),
                aorta_hu=None if aorta_hu is None else round(float(aorta_hu), 1),
                centroid_mm=[round(float(v), 1) for v in volume.patient_point(k + self.first, i, j)],
                max_extent_mm=round(float(extent), 1),
                compartment=compartment_at(k + self.first, i, j),
                voxel=[int(nearest[0]) + self.first, int(nearest[1]), int(nearest[2])]))
        return sorted(foci, key=lambda f: -f.volume_ml)

    def relabel(self, focus_id: int, value: int) -> None:
        """Give every voxel of one focus another label (e.g. contained vascular injury)."""
        box = ndimage.find_objects(self.ids)[focus_id - 1]
        target = self.labels[self.first + box[0].start:self.first + box[0].stop, box[1], box[2]]
        target[self.ids[box] == focus_id] = value
