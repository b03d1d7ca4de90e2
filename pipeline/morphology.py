"""Fast binary morphology with box-shaped elements.

scipy's binary_* functions visit every element of the structure at every
voxel. A box is separable (one 1D pass per axis), and a 1D pass is a few
shifted ORs (dilation) or ANDs (erosion) of whole arrays, done only over the
mask's bounding box grown by the box's reach (nothing changes further out).
The results are those of ndimage.maximum_filter (dilation) and
ndimage.minimum_filter with mode "nearest" (erosion): both take the extreme
over the window clipped to the array.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

Size = tuple[int, ...]


def dilate(mask: np.ndarray, size: Size) -> np.ndarray:
    return _box_filter(mask, size, np.logical_or)


def erode(mask: np.ndarray, size: Size) -> np.ndarray:
    # Outside the array counts as set, so structures touching the edge survive.
    return _box_filter(mask, size, np.logical_and)


def open_(mask: np.ndarray, size: Size) -> np.ndarray:
    """Removes every structure narrower than the box."""
    return dilate(erode(mask, size), size)


def min_filter(array: np.ndarray, size: Size) -> np.ndarray:
    """The minimum over a box round each element, clipped to the array: what
    ndimage.minimum_filter gives with mode "reflect" or "nearest" (the values
    those modes bring in are already in the clipped box), without its per-element
    cost."""
    out = array
    for axis, s in enumerate(size):
        if s > 1:
            out = _along(out, axis, s, np.minimum)
    return out if out is not array else array.copy()


def in_plane(radius: int) -> Size:
    return (1, 2 * radius + 1, 2 * radius + 1)


def reconstruct(seeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The connected components of mask (3D, face-connected) that hold a seed."""
    labels, count = ndimage.label(mask)
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(labels[seeds & mask])] = True
    keep[0] = False
    return keep[labels]


def bounding_box(array: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of the nonzero elements (None without any); each axis is
    sought within the range already found along the earlier ones."""
    box = [slice(None)] * array.ndim
    for axis in range(array.ndim):
        others = tuple(a for a in range(array.ndim) if a != axis)
        found = np.flatnonzero(array[tuple(box)].any(axis=others))
        if not found.size:
            return None
        box[axis] = slice(int(found[0]), int(found[-1]) + 1)
    return tuple(box)


def grow_box(box: tuple[slice, ...], margin: Sequence[int], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """box grown by margin along each axis, within shape."""
    return tuple(slice(max(0, s.start - m), min(n, s.stop + m)) for s, m, n in zip(box, margin, shape))


def _box_filter(mask: np.ndarray, size: Size, combine: np.ufunc) -> np.ndarray:
    """OR or AND over a box of size (a window of s covers offsets -(s // 2) to
    s - 1 - s // 2, as ndimage's filters), clipped to the array."""
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(mask.shape, dtype=bool)
    box = bounding_box(mask)
    if box is None:
        return out
    # Beyond the box grown by the reach every voxel is unset, before and after.
    grown = grow_box(box, [s // 2 for s in size], mask.shape)
    part = mask[grown]
    for axis, s in enumerate(size):
        if s > 1:
            part = _along(part, axis, s, combine)
    out[grown] = part
    return out


def erode_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """Erosion in-plane (the last two axes) by a disk: a pixel stays where every pixel
    within radius (Euclidean, in pixels) is set, outside the array counting as set.
    The disk is a stack of rows: a row erosion per row half-width, shifted and ANDed."""
    rows = {}
    out = np.ones(mask.shape, dtype=bool)
    for offset in range(-radius, radius + 1):
        half = math.isqrt(radius * radius - offset * offset)
        if half not in rows:
            rows[half] = erode(mask, (1,) * (mask.ndim - 1) + (2 * half + 1,))
        _combine_shifted(out, rows[half], mask.ndim - 2, offset, np.logical_and)
    return out


def _along(source: np.ndarray, axis: int, size: int, combine: np.ufunc) -> np.ndarray:
    out = source.copy()
    for offset in range(-(size // 2), size - size // 2):
        if offset:
            _combine_shifted(out, source, axis, offset, combine)
    return out


def _combine_shifted(out: np.ndarray, source: np.ndarray, axis: int, offset: int, combine: np.ufunc) -> None:
    """out[i] = combine(out[i], source[i + offset]) along axis, where i + offset is inside."""
    n = source.shape[axis]
    if abs(offset) >= n:
        return
    into = [slice(None)] * source.ndim
    into[axis] = slice(max(0, -offset), n - max(0, offset))
    taken = list(into)
    taken[axis] = slice(max(0, offset), n + min(0, offset))
    target = out[tuple(into)]
    combine(target, source[tuple(taken)], out=target)
