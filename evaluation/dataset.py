"""Labelled CT studies to measure and train on: the RSNA 2023 layout, or a site's own folder.

RSNA 2023 Abdominal Trauma Detection (Kaggle):

    train.csv                 patient_id and the target columns (TARGET_COLUMNS)
    train_series_meta.csv     patient_id, series_id, aortic_hu, incomplete_organ
    image_level_labels.csv    patient_id, series_id, instance_number, injury_name
    train_images/<patient>/<series>/<instance>.dcm
    segmentations/<series>.nii   organ masks (1 liver, 2 spleen, 3 left kidney,
                                 4 right kidney, 5 bowel), for some series

A site's own studies:

    labels.csv                patient_id and the same target columns
    <patient_id>/**/*.dcm     each patient's DICOM files, any folders below; grouped
                              into series by Series Instance UID
    masks/<series uid>.nii[.gz] or masks/<series uid>.dcm
                              hemorrhage masks, optional: a label map (1 blood, 2
                              active extravasation, 3 contained vascular injury; any
                              other non-zero value blood) or a DICOM SEG, such as
                              the node's own, corrected in a viewer

A bad row or a missing file is reported with the row and skipped (Dataset.problems);
the rest is read.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

RSNA = "rsna2023"
SITE = "site"

# The three-level organs and the two binary targets of RSNA 2023, with their columns.
LEVELS = ("healthy", "low", "high")
ORGANS_3 = ("kidney", "liver", "spleen")
BINARY = ("bowel", "extravasation")
TARGET_COLUMNS = (
    "bowel_healthy", "bowel_injury", "extravasation_healthy", "extravasation_injury",
    *(f"{organ}_{level}" for organ in ORGANS_3 for level in LEVELS), "any_injury")
RSNA_ORGAN_MASK_LABELS = {1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right",
                          5: "bowel"}


class DatasetError(Exception):
    """The dataset cannot be read at all (no labels file, unknown layout)."""


@dataclass
class Labels:
    """One patient's targets: each three-level organ healthy, low or high; bowel and
    extravasation healthy or injury."""

    values: dict[str, int]

    def level(self, target: str) -> str:
        """'healthy', 'low' or 'high' for kidney/liver/spleen; 'healthy' or 'injury' else."""
        levels = LEVELS if target in ORGANS_3 else ("healthy", "injury")
        return next(level for level in levels if self.values[f"{target}_{level}"] == 1)

    @property
    def any_injury(self) -> bool:
        return bool(self.values["any_injury"])


@dataclass
class SeriesEntry:
    patient_id: str
    series_id: str  # RSNA: the series_id column; a site: the Series Instance UID
    files: list[Path]
    hemorrhage_mask: Path | None = None  # NIfTI label map or DICOM SEG
    organ_mask: Path | None = None  # RSNA segmentations/<series>.nii
    meta: dict[str, str] = field(default_factory=dict)  # e.g. aortic_hu, incomplete_organ
    # RSNA image_level_labels.csv: instance number -> injuries seen on it
    injured_instances: dict[int, list[str]] = field(default_factory=dict)


@dataclass
class Study:
    patient_id: str
    labels: Labels
    series: list[SeriesEntry]


@dataclass
class Dataset:
    root: Path
    layout: str
    studies: list[Study]
    problems: list[str]  # what was skipped, and why, naming the row or file


def open_dataset(root: Path | str, layout: str = "auto") -> Dataset:
    """Read a dataset's labels and find its files; layout 'auto' tells them apart by the
    labels file (train.csv: RSNA; labels.csv: a site)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    if layout == "auto":
        layout = RSNA if (root / "train.csv").is_file() else SITE if (
            root / "labels.csv").is_file() else ""
        if not layout:
            raise DatasetError(f"{root}: neither train.csv (RSNA 2023) nor labels.csv (a site's "
                               "studies) is there")
    if layout == RSNA:
        return _open_rsna(root)
    if layout == SITE:
        return _open_site(root)
    raise DatasetError(f"unknown dataset layout {layout!r}: {RSNA}, {SITE} or auto")


def _read_labels(path: Path, problems: list[str]) -> dict[str, Labels]:
    if not path.is_file():
        raise DatasetError(f"{path}: missing")
    labels: dict[str, Labels] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("patient_id", *TARGET_COLUMNS) if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path.name}: missing columns {', '.join(missing)}")
        for number, row in enumerate(reader, start=2):  # row 1 is the header
            where = f"{path.name} row {number}"
            patient = (row.get("patient_id") or "").strip()
            problem = _row_problem(row) if patient else "no patient_id"
            if problem is None and patient in labels:
                problem = f"patient {patient} listed twice"
            if problem is not None:
                problems.append(f"{where}: {problem}; skipped")
                continue
            labels[patient] = Labels({c: int(row[c]) for c in TARGET_COLUMNS})
    return labels


def _row_problem(row: dict[str, str]) -> str | None:
    """Why a labels row cannot be used, or None."""
    try:
        values = {c: int(str(row[c]).strip()) for c in TARGET_COLUMNS}
    except (TypeError, ValueError):
        bad = [c for c in TARGET_COLUMNS if not str(row.get(c, "")).strip().lstrip("-").isdigit()]
        return f"not a 0 or 1 in {', '.join(bad)}"
    if any(v not in (0, 1) for v in values.values()):
        return "values must be 0 or 1"
    for target in (*BINARY, *ORGANS_3):
        columns = [c for c in TARGET_COLUMNS if c.startswith(f"{target}_")]
        if sum(values[c] for c in columns) != 1:
            return f"{target}_* columns must hold exactly one 1"
    injured = any(values[c] for c in TARGET_COLUMNS if not c.endswith("_healthy") and c != "any_injury")
    if values["any_injury"] != int(injured):
        return f"any_injury is {values['any_injury']} but the organ columns say {int(injured)}"
    return None


def _csv_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(enumerate(csv.DictReader(handle), start=2))


def _open_rsna(root: Path) -> Dataset:
    problems: list[str] = []
    labels = _read_labels(root / "train.csv", problems)
    series_by_patient: dict[str, list[SeriesEntry]] = {}
    meta_path = root / "train_series_meta.csv"
    rows = _csv_rows(meta_path)
    if not rows:  # the images alone say which series each patient has
        rows = [(0, {"patient_id": p.parent.name, "series_id": p.name})
                for p in sorted((root / "train_images").glob("*/*")) if p.is_dir()]
    for number, row in rows:
        where = f"{meta_path.name} row {number}" if number else "train_images"
        patient, series = (row.get("patient_id") or "").strip(), (row.get("series_id") or "").strip()
        if not patient or not series:
            problems.append(f"{where}: no patient_id or series_id; skipped")
            continue
        folder = root / "train_images" / patient / series
        files = sorted(folder.glob("*.dcm"), key=_instance_order)
        if not files:
            problems.append(f"{where}: patient {patient} series {series}: no DICOM files in "
                            f"{folder.relative_to(root)}; skipped")
            continue
        organ_mask = root / "segmentations" / f"{series}.nii"
        series_by_patient.setdefault(patient, []).append(SeriesEntry(
            patient, series, files,
            organ_mask=organ_mask if organ_mask.is_file() else None,
            meta={k: v for k, v in row.items() if k not in ("patient_id", "series_id")}))
    for number, row in _csv_rows(root / "image_level_labels.csv"):
        entry = next((s for s in series_by_patient.get(row.get("patient_id", ""), [])
                      if s.series_id == row.get("series_id")), None)
        try:
            instance = int(row["instance_number"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"image_level_labels.csv row {number}: no instance_number; skipped")
            continue
        if entry is not None:
            entry.injured_instances.setdefault(instance, []).append(row.get("injury_name", ""))
    return Dataset(root, RSNA, _studies(labels, series_by_patient, problems), problems)


def _instance_order(path: Path) -> tuple[int, str]:
    return (int(path.stem), "") if path.stem.isdigit() else (0, path.stem)


def _open_site(root: Path) -> Dataset:
    problems: list[str] = []
    labels = _read_labels(root / "labels.csv", problems)
    series_by_patient: dict[str, list[SeriesEntry]] = {}
    for patient in sorted(labels):
        folder = root / patient
        if not folder.is_dir():
            continue  # said once, below
        by_series: dict[str, list[Path]] = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True,
                                         specific_tags=["SeriesInstanceUID"])
                uid = str(header.SeriesInstanceUID)
            except (InvalidDicomError, AttributeError, OSError):
                problems.append(f"{path.relative_to(root)}: not a DICOM file with a Series "
                                "Instance UID; skipped")
                continue
            by_series.setdefault(uid, []).append(path)
        for uid, files in by_series.items():
            mask = next((m for m in (root / "masks" / f"{uid}{ext}" for ext in (".nii", ".nii.gz", ".dcm"))
                         if m.is_file()), None)
            series_by_patient.setdefault(patient, []).append(
                SeriesEntry(patient, uid, files, hemorrhage_mask=mask))
    return Dataset(root, SITE, _studies(labels, series_by_patient, problems), problems)


def _studies(labels: dict[str, Labels], series_by_patient: dict[str, list[SeriesEntry]],
             problems: list[str]) -> list[Study]:
    studies = []
    for patient, patient_labels in labels.items():
        series = series_by_patient.get(patient)
        if not series:
            problems.append(f"patient {patient}: labelled but no images found; skipped")
            continue
        studies.append(Study(patient, patient_labels, series))
    for patient in sorted(set(series_by_patient) - set(labels)):
        problems.append(f"patient {patient}: images but no labels row; skipped")
    return studies
