"""CT slices as model inputs: soft-tissue window, RGB, 2.5D context.

Window centre 50 HU, width 400 HU by default (pipeline.models.window_*): the
abdominal soft-tissue window, as the RSNA LoRA recipe trained on.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def window01(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """HU to [0, 1] float32 through the window."""
    low = center - width / 2.0
    return np.clip((hu.astype(np.float32) - low) / width, 0.0, 1.0)


def window_uint8(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    return np.round(window01(hu, center, width) * 255.0).astype(np.uint8)


def neighbours(k: int, count: int, context: int) -> list[int]:
    """Slice indices k-context..k+context, clamped to the volume."""
    return [min(max(k + d, 0), count - 1) for d in range(-context, context + 1)]


def slice_rgb(hu: np.ndarray, k: int, center: float, width: float, context: int = 0) -> np.ndarray:
    """Slice k as an RGB uint8 image (rows, cols, 3).

    context 0: the slice in all three channels (grey). context c > 0 (2.5D):
    red is the slice c above (cranial, index k - c), green the slice itself,
    blue the slice c below.
    """
    if context <= 0:
        grey = window_uint8(hu[k], center, width)
        return np.repeat(grey[:, :, None], 3, axis=2)
    n = hu.shape[0]
    above, below = max(k - context, 0), min(k + context, n - 1)
    return np.stack([window_uint8(hu[i], center, width) for i in (above, k, below)], axis=2)


def stack_25d(hu: np.ndarray, indices: Sequence[int], center: float, width: float,
              context: int) -> np.ndarray:
    """float32 (len(indices), 2*context+1, rows, cols) in [0, 1]: each slice and its neighbours."""
    n = hu.shape[0]
    out = np.empty((len(indices), 2 * context + 1, hu.shape[1], hu.shape[2]), dtype=np.float32)
    for row, k in enumerate(indices):
        for channel, i in enumerate(neighbours(k, n, context)):
            out[row, channel] = window01(hu[i], center, width)
    return out
