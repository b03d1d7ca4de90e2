"""Does a complete series fit the pipeline? Rules from the [selection] config.

Decided from the header values stored per instance at receive time: SOP class,
modality, image type, reconstruction kernel, description, number of slices,
orientation (axial), and consistent geometry. The first rule that fails gives
the skip reason recorded for the series.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

from pydicom.uid import UID

from node.config import SelectionSection

def sop_class_name(uid: str) -> str:
    """pydicom knows the name of every standard SOP class."""
    name = UID(uid).name
    return name if name != uid else uid


@dataclass
class Decision:
    selected: bool
    reason: str | None
    slices: int = 0
    slice_spacing_mm: float | None = None


def _skip(reason: str, slices: int = 0) -> Decision:
    return Decision(False, reason, slices)


def _normal(orientation: list[float]) -> tuple[float, float, float]:
    r, c = orientation[:3], orientation[3:]
    n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    length = math.sqrt(sum(v * v for v in n)) or 1.0
    return (n[0] / length, n[1] / length, n[2] / length)


def _too_big(images: list[dict[str, Any]], voxels: int, rules: SelectionSection) -> str | None:
    """Beyond what one series may cost the worker's memory (decided before any decoding:
    a series large enough could kill the worker, again at each attempt)."""
    if voxels > rules.max_voxels:
        return f"{voxels:,} voxels, more than selection.max_voxels ({rules.max_voxels:,})"
    decoded = sum(g["rows"] * g["columns"] * int(g.get("frames") or 1)
                  * int(g.get("samples_per_pixel") or 1)
                  * -(-int(g.get("bits_allocated") or 16) // 8) for g in images)
    if decoded > rules.max_decoded_bytes:
        return (f"{decoded:,} bytes of pixel data decoded, more than "
                f"selection.max_decoded_bytes ({rules.max_decoded_bytes:,})")
    return None


def decide(instances: Iterable[tuple[str, dict[str, Any]]], rules: SelectionSection) -> Decision:
    """instances: (SOP Class UID, stored geometry) of every instance of the series version."""
    instances = list(instances)
    images = [g for sop, g in instances if sop in rules.sop_classes]
    if not images:
        classes = sorted({sop_class_name(sop) for sop, _ in instances})
        return _skip(f"not analysed: SOP class {', '.join(classes)}")
    first = images[0]
    modality = first.get("modality") or ""
    if modality not in rules.modalities:
        return _skip(f"modality {modality or '(none)'} not in {rules.modalities}")
    image_type = {v.upper() for g in images for v in (g.get("image_type") or [])}
    excluded = sorted(image_type & {v.upper() for v in rules.exclude_image_types})
    if excluded:
        return _skip(f"image type {'/'.join(excluded)} excluded")
    kernel = (first.get("kernel") or "").upper()
    for word in rules.exclude_kernels:
        if word and word.upper() in kernel:
            return _skip(f"reconstruction kernel {kernel!r} excluded ({word})")
    description = first.get("series_description") or ""
    for pattern in rules.exclude_series_descriptions:
        if re.search(pattern, description):
            return _skip(f"series description matches excluded pattern {pattern!r}")

    slices = sum(int(g.get("frames") or 1) for g in images)
    if slices < rules.min_slices:
        return _skip(f"{slices} slices, fewer than the {rules.min_slices} required", slices)

    orientations = [g.get("orientation") for g in images]
    if any(o is None or len(o) != 6 for o in orientations):
        return _skip("image orientation missing", slices)
    ref = orientations[0]
    if any(max(abs(a - b) for a, b in zip(o, ref)) > 1e-3 for o in orientations):
        return _skip("mixed image orientations in the series", slices)
    sizes = {(g.get("rows"), g.get("columns")) for g in images}
    if len(sizes) != 1:
        return _skip(f"mixed image sizes {sorted(sizes, key=str)}", slices)
    rows, columns = next(iter(sizes))
    if not rows or not columns:
        return _skip("image size (rows, columns) missing", slices)
    too_big = _too_big(images, rows * columns * slices, rules)
    if too_big:
        return _skip(too_big, slices)
    normal = _normal(ref)
    if rules.require_axial:
        tilt = math.degrees(math.acos(min(1.0, abs(normal[2]))))
        if tilt > rules.axial_tolerance_deg:
            return _skip(f"not axial: slice normal {tilt:.0f} deg from the z axis", slices)
    spacings = {tuple(round(v, 4) for v in (g.get("pixel_spacing") or [])) for g in images}
    if len(spacings) != 1 or not next(iter(spacings)):
        return _skip("pixel spacing missing or not the same on every slice", slices)

    positions: list[list[float]] = []
    for g in images:
        if g.get("frame_positions"):
            positions.extend(g["frame_positions"])
        elif g.get("position") is not None:
            positions.append(g["position"])
    if len(positions) != slices:
        return _skip("image position missing on some slices", slices)
    along = sorted(sum(p[i] * normal[i] for i in range(3)) for p in positions)
    steps = [b - a for a, b in zip(along, along[1:])]
    if any(step < 1e-3 for step in steps):
        return _skip("duplicate slice positions", slices)
    spacing = sorted(steps)[len(steps) // 2]
    if max(steps) - min(steps) > rules.spacing_tolerance_mm + 0.01 * spacing:
        return _skip(f"inconsistent slice spacing ({min(steps):.2f} to {max(steps):.2f} mm): "
                     "gaps or missing slices", slices)
    if spacing > rules.max_slice_spacing_mm:
        return _skip(f"slice spacing {spacing:.2f} mm above {rules.max_slice_spacing_mm} mm",
                     slices)
    return Decision(True, None, slices, round(spacing, 4))
