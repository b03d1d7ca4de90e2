"""Small labelled datasets written from the phantoms: the RSNA 2023 layout and a site's.

What evaluation.dataset reads, with NIfTI masks placed by the series' geometry (as
dcm2niix writes them: RAS affine, the first array axis along the rows' direction).
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from evaluation.dataset import TARGET_COLUMNS
from support.phantom import PhantomTruth, make_volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def healthy_row(patient: str, **injuries: int) -> dict[str, object]:
    """A labels row: every target healthy unless named (e.g. spleen_low=1, extravasation_injury=1)."""
    row: dict[str, object] = {"patient_id": patient}
    row.update({c: int(c.endswith("_healthy")) for c in TARGET_COLUMNS})
    for column in injuries:
        target = column.rsplit("_", 1)[0]
        for c in TARGET_COLUMNS:
            if c.startswith(f"{target}_"):
                row[c] = int(c == column)
    row["any_injury"] = int(bool(injuries))
    return row


def write_csv(path: Path, rows: list[dict[str, object]], columns: list[str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_nifti(labels: np.ndarray, truth: PhantomTruth, path: Path) -> None:
    """labels (slices cranial first, rows, columns) as a NIfTI file on the series' geometry."""
    import nibabel

    headers = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in truth.paths),
                     key=lambda ds: -float(ds.ImagePositionPatient[2]))  # cranial first
    first, second = headers[0], headers[1]
    row_dir = np.array(first.ImageOrientationPatient[:3], dtype=float)
    col_dir = np.array(first.ImageOrientationPatient[3:], dtype=float)
    dr, dc = (float(v) for v in first.PixelSpacing)
    origin = np.array(first.ImagePositionPatient, dtype=float)
    step = np.array(second.ImagePositionPatient, dtype=float) - origin
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_dir * dc, col_dir * dr, step, origin
    data = np.transpose(labels, (2, 1, 0)).astype(np.uint8)  # (columns, rows, slices)
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(data, LPS_TO_RAS @ lps), str(path))


def truth_labels(truth: PhantomTruth) -> np.ndarray:
    return make_volume(truth.spec)[1]


@dataclass
class Written:
    root: Path
    series_of: dict[str, str]  # patient -> series id


def write_rsna(root: Path, cases: dict[str, tuple[PhantomTruth, dict[str, int]]],
               extra_rows: list[dict[str, object]] = (), organ_masks: bool = True) -> Written:
    """train_images/<patient>/<series>/<instance>.dcm with train.csv, train_series_meta.csv,
    image_level_labels.csv and segmentations/<series>.nii (a box of 'spleen', label 2)."""
    rows, meta, image_labels, series_of = [], [], [], {}
    for number, (patient, (truth, injuries)) in enumerate(cases.items()):
        series = str(1000 + number)
        series_of[patient] = series
        folder = root / "train_images" / patient / series
        folder.mkdir(parents=True, exist_ok=True)
        for path in truth.paths:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["InstanceNumber"])
            shutil.copy(path, folder / f"{int(ds.InstanceNumber)}.dcm")
        rows.append(healthy_row(patient, **injuries))
        meta.append({"patient_id": patient, "series_id": series, "aortic_hu": 180.0,
                     "incomplete_organ": 0})
        if injuries.get("extravasation_injury"):
            image_labels.append({"patient_id": patient, "series_id": series,
                                 "instance_number": 20, "injury_name": "Active_Extravasation"})
        if organ_masks:
            box = np.zeros((truth.spec.slices, truth.spec.rows, truth.spec.cols), np.uint8)
            box[5:10, 10:20, 30:40] = 2
            write_nifti(box, truth, root / "segmentations" / f"{series}.nii")
    write_csv(root / "train.csv", rows + list(extra_rows), ["patient_id", *TARGET_COLUMNS])
    write_csv(root / "train_series_meta.csv", meta)
    if image_labels:
        write_csv(root / "image_level_labels.csv", image_labels)
    return Written(root, series_of)


def write_site(root: Path, cases: dict[str, tuple[PhantomTruth, dict[str, int]]],
               masks: bool = True) -> Written:
    """<patient>/<anything>/<file> DICOM folders, labels.csv, masks/<series uid>.nii.gz of
    the phantom's truth (1 blood, 2 blush)."""
    rows, series_of = [], {}
    for patient, (truth, injuries) in cases.items():
        folder = root / patient / "CT"
        folder.mkdir(parents=True, exist_ok=True)
        for path in truth.paths:
            shutil.copy(path, folder / path.name)
        rows.append(healthy_row(patient, **injuries))
        series_of[patient] = truth.spec.series_uid
        if masks:
            write_nifti(truth_labels(truth), truth, root / "masks" / f"{truth.spec.series_uid}.nii.gz")
    write_csv(root / "labels.csv", rows, ["patient_id", *TARGET_COLUMNS])
    return Written(root, series_of)
