"""A job's results on disk and in the outbox.

For series version N: data/results/<study>/<series>/v<N>/ holds findings.json,
labels.npy, report.txt and the DICOM objects: seg.dcm, sr.dcm, sc-01.dcm...
(the summary page, then the key images), pdf.dcm and kos.dcm (`trauma-node
analyze` writes the same files to its --out folder); sr-amended.dcm when the version was
re-reported once its prior study was analysed (node.prior.amendment, which then replaces
findings.json and report.txt and queues it with queue_delivery). The DICOM objects get UIDs
derived from the series version (dicom_out), so writing them again replaces
rather than duplicates, and each is queued once per destination that wants its
kind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from math import prod
from pathlib import Path
from typing import Any, BinaryIO, Callable, Collection, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_out.outputs import KINDS, DicomOutputs, add_for_other_viewers, build_seg_and_sr
from dicom_out.key_slices import SliceReader, read_from_file
from pipeline.findings import Findings

from node import __version__

from node.store import outbox
from node.config import Settings
from node.store.database import Index
from node.store.spool import results_dir

log = logging.getLogger("trauma_node.results")

ALGORITHM_NAME = "trauma-node"


# What one version's results may take beyond the label volume: the summary page and key
# images, the PDF, the SR and findings.json come to a few MB.
RESULTS_OVERHEAD_BYTES = 32 * 2**20

# The version's SR issued again with the prior's comparison (node.prior.amendment).
AMENDED_SR = "sr-amended.dcm"


class NoRoomForResults(Exception):
    """Writing the results would take the disk below storage.min_free_disk_mb."""

    def __init__(self, message: str, needed: int):
        super().__init__(message)
        self.needed = needed


def disk_free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def results_bytes(shape: Collection[int]) -> int:
    """At most what one version's results take: the labels twice (labels.npy, the SEG's
    frames at worst) and the rest."""
    return 2 * prod(shape) + RESULTS_OVERHEAD_BYTES


def check_room(settings: Settings, needed: int) -> None:
    """Results respect the free-disk floor as received instances do; raises NoRoomForResults."""
    floor = settings.storage.min_free_disk_mb * 2**20
    free = disk_free_bytes(settings.data_dir)
    if free - needed < floor:
        raise NoRoomForResults(
            f"{needed / 2**20:.0f} MB of results would leave {max(0, free - needed) / 2**20:.0f} MB "
            f"free, below storage.min_free_disk_mb ({settings.storage.min_free_disk_mb} MB)",
            needed)


def aside(path: Path) -> Path:
    """A temporary name beside path, this process's and call's own (two writers of the same
    file, in two processes or on two nodes, never mix their bytes)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_atomically(path: Path, write: Callable[[BinaryIO], object],
                     durable: bool = False) -> None:
    """Readers never see a half-written file: write aside, then rename. durable: on disk
    (fsync) before the rename."""
    temporary = aside(path)
    try:
        with temporary.open("wb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_outputs(findings: Findings, source_paths: list[Path], out_dir: Path,
                  series_version: int, unreported: Collection[int] = (), *,
                  sources: Sequence[Dataset] | None = None,
                  read_slice: SliceReader = read_from_file,
                  written_first: Callable[[dict[str, list[Path]]], object] = lambda _: None
                  ) -> dict[str, list[Path]]:
    """findings.json, labels.npy, report.txt and the DICOM objects in out_dir.

    Returns the DICOM objects written by kind, {"seg": [path], "sr": [path],
    "sc": [path, ...], ...}; a kind with no object (no KOS without key slices) is left out.
    unreported: earlier versions whose results were never sent (withdrawn), which the new
    SR does not name as its predecessor. sources: the headers of source_paths when already
    read (else read here); read_slice: the HU of a key slice (default: decoded again).
    written_first: told of the SEG as soon as it is written, then of the SR, before the rest
    is built (the node queues each for delivery then: the SEG is sent while the SR is built).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    # dicom_out needs the source headers, and the pixels of the key slices only, which
    # read_from_file reads from the files the headers name.
    if sources is None:
        sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in source_paths]
    identity = dict(series_version=series_version, algorithm_name=ALGORITHM_NAME,
                    algorithm_version=__version__)
    written: dict[str, list[Path]] = {}

    def write_first(kind: str, dataset: Dataset) -> None:
        new = _write_objects({kind: [dataset]}, out_dir)
        written.update(new)
        written_first(new)

    seg, sr = build_seg_and_sr(findings, sources, **identity,
                               previous_sr=previous_sr(out_dir, series_version, unreported),
                               seg_built=lambda seg: write_first("seg", seg))
    write_first("sr", sr)
    outputs = DicomOutputs(seg=seg, sr=sr)
    add_for_other_viewers(outputs, findings, sources, read_slice=read_slice, **identity)
    written |= _write_objects({kind: datasets for kind, datasets in outputs.by_kind().items()
                               if kind not in written}, out_dir)
    if findings.labels is not None:
        labels = findings.labels
        write_atomically(out_dir / "labels.npy", lambda h: np.save(h, labels, allow_pickle=False))
        findings.labels_file = "labels.npy"
    document = json.dumps(findings.to_json_dict(), indent=2).encode()
    write_atomically(out_dir / "findings.json", lambda h: h.write(document))
    write_atomically(out_dir / "report.txt", lambda h: h.write(findings.report.encode()))
    return {kind: written[kind] for kind in KINDS if kind in written}


def _write_objects(objects: dict[str, list[Dataset]], out_dir: Path) -> dict[str, list[Path]]:
    """seg.dcm, sr.dcm, sc-01.dcm..., pdf.dcm, kos.dcm; a kind without objects is left out."""
    written: dict[str, list[Path]] = {}
    for kind, datasets in objects.items():
        for number, dataset in enumerate(datasets, start=1):
            path = out_dir / (f"{kind}-{number:02d}.dcm" if kind == "sc" else f"{kind}.dcm")
            write_atomically(path, lambda h, ds=dataset: ds.save_as(h))
            written.setdefault(kind, []).append(path)
    return written


def previous_sr(out_dir: Path, series_version: int, unreported: Collection[int] = ()
                ) -> pydicom.Dataset | None:
    """The SR of the latest earlier version of this series (sibling v<N> folders), if one was made:
    its amended SR when it was re-reported with the prior's comparison, which superseded it.

    A version that was never reported (it failed, was superseded before it ran, or its
    results were withdrawn) is passed over: the new SR's predecessor is the report a
    reader may have seen.
    """
    for version in range(series_version - 1, 0, -1):
        if version in unreported:
            continue
        folder = out_dir.parent / f"v{version}"
        path = folder / AMENDED_SR if (folder / AMENDED_SR).is_file() else folder / "sr.dcm"
        if path.is_file():
            try:
                return pydicom.dcmread(path, specific_tags=[
                    "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"])
            except (OSError, InvalidDicomError) as exc:
                log.warning("series version %d: earlier report unreadable (%s); not referenced",
                            series_version, exc)
    return None


def queue_delivery(settings: Settings, index: Index, study_uid: str, series_uid: str,
                   version: int, objects: dict[str, list[Path]], hold_s: float = 0.0) -> int:
    """One outbox row per object and destination that wants that kind of object, sent
    hold_s from now at the earliest."""
    not_before = time.time() + hold_s if hold_s else 0.0
    items: list[dict[str, Any]] = []
    for kind, path in ((kind, path) for kind, paths in objects.items() for path in paths):
        sop_uid = str(pydicom.dcmread(path, stop_before_pixels=True,
                                      specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
        for dest in settings.destinations:
            if kind in dest.objects:
                items.append({"study_uid": study_uid, "series_uid": series_uid,
                              "series_version": version, "kind": kind,
                              "sop_instance_uid": sop_uid, "path": str(path),
                              "destination": dest.name, "next_attempt_at": not_before})
    return outbox.enqueue(index, items)
