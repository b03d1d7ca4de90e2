"""Finding the CT series in a folder of DICOM files (no network, no database)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from pipeline.volume import VolumeError

AXIAL_MIN_NORMAL_Z = 0.8  # |cos| of the angle between the slice normal and the body axis


@dataclass
class SeriesFiles:
    series_instance_uid: str
    modality: str
    description: str
    paths: list[Path] = field(default_factory=list)
    images: int = 0  # frames, counting every frame of a multi-frame file
    axial: bool = True
    localizer: bool = False


def _orientation(ds: pydicom.Dataset) -> list[float] | None:
    if "ImageOrientationPatient" in ds:
        return [float(v) for v in ds.ImageOrientationPatient]
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for item in ds.get(groups, [])[:1]:
            for plane in item.get("PlaneOrientationSequence", [])[:1]:
                return [float(v) for v in plane.ImageOrientationPatient]
    return None


def _header(path: Path) -> pydicom.Dataset | None:
    if path.name.upper() == "DICOMDIR":
        return None
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None  # not DICOM: other files in the folder are ignored


def scan_folder(root: Path) -> list[SeriesFiles]:
    """The DICOM files under root, grouped by series (other files ignored)."""
    groups: dict[str, SeriesFiles] = {}
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        ds = _header(path)
        if ds is None or "SOPClassUID" not in ds:
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        group = groups.setdefault(uid, SeriesFiles(uid, str(ds.get("Modality", "")),
                                                   str(ds.get("SeriesDescription", ""))))
        group.paths.append(path)
        group.images += int(ds.get("NumberOfFrames", 1) or 1)
        iop = _orientation(ds)
        if iop is not None and abs(float(np.cross(iop[:3], iop[3:])[2])) < AXIAL_MIN_NORMAL_Z:
            group.axial = False
        if "LOCALIZER" in [str(v).upper() for v in ds.get("ImageType", [])]:
            group.localizer = True
    return list(groups.values())


def pick_ct_series(series: list[SeriesFiles]) -> SeriesFiles:
    """The largest axial CT series (localizers and other modalities left out)."""
    candidates = [s for s in series if s.modality == "CT" and s.axial and not s.localizer]
    if not candidates:
        found = ", ".join(f"{s.modality or '?'} x{s.images}" for s in series) or "no DICOM files"
        raise VolumeError(f"no axial CT series among the files ({found})")
    return max(candidates, key=lambda s: s.images)
