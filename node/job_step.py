"""What a worker does with one series version.

Placeholder until the pipeline lands: records the series' geometry (slices,
slice spacing along the normal, HU range), reading every slice once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom


def run_job_step(paths: list[Path], settings: Any | None = None) -> dict:
    positions, hu_min, hu_max, spacing_xy = [], None, None, None
    normal = None
    for path in paths:
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds:
            continue
        if normal is None:
            iop = [float(v) for v in ds.ImageOrientationPatient]
            normal = np.cross(iop[:3], iop[3:])
            spacing_xy = [float(v) for v in ds.PixelSpacing]
        positions.append(float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])))
        hu = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        lo, hi = float(hu.min()), float(hu.max())
        hu_min = lo if hu_min is None else min(hu_min, lo)
        hu_max = hi if hu_max is None else max(hu_max, hi)
    positions.sort()
    steps = np.diff(positions)
    return {
        "step": "geometry placeholder",
        "slices": len(positions),
        "slice_spacing_mm": float(np.median(steps)) if len(steps) else None,
        "pixel_spacing_mm": spacing_xy,
        "hu_range": [hu_min, hu_max],
    }
