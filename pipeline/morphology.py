"""Fast binary morphology with box-shaped elements.

scipy's binary_* functions visit every element of the structure at every
voxel; maximum/minimum filters with a box are separable (one 1D pass per axis),
which is an order of magnitude faster on whole CT volumes.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

Size = tuple[int, ...]


def dilate(mask: np.ndarray, size: Size) -> np.ndarray:
    return ndimage.maximum_filter(mask.view(np.uint8), size=size).view(bool)


def erode(mask: np.ndarray, size: Size) -> np.ndarray:
    # Outside the array counts as set, so structures touching the edge survive.
    return ndimage.minimum_filter(mask.view(np.uint8), size=size, mode="nearest").view(bool)


def open_(mask: np.ndarray, size: Size) -> np.ndarray:
    """Removes every structure narrower than the box."""
    return dilate(erode(mask, size), size)


def in_plane(radius: int) -> Size:
    return (1, 2 * radius + 1, 2 * radius + 1)


def reconstruct(seeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The connected components of mask (3D, face-connected) that hold a seed."""
    labels, count = ndimage.label(mask)
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[seeds & mask])] = True
    keep[0] = False
    return keep[labels]
