"""`trauma-node analyze DIR --out OUTDIR`: the pipeline on a folder, no network.

Writes to OUTDIR:
- findings.json: the Findings record (see pipeline/README.md), label volume left out;
- labels.npy: the label volume (uint8, slices x rows x columns, in the order of
  findings.json's series.slices; 1 = hemorrhage, 2 = active extravasation);
- report.txt: the report text, also printed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from pipeline import Findings, PipelineSettings, run_series
from pipeline.series import pick_ct_series, scan_folder
from pipeline.volume import VolumeError


def _write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Readers never see a half-written file: write aside, then rename."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as handle:
        write(handle)
    os.replace(temporary, path)


def analyze(input_dir: Path, out_dir: Path, settings: PipelineSettings | None = None,
            progress: Callable[[str], None] = print) -> Findings:
    """Run the pipeline on the CT series found under input_dir; raises VolumeError on bad input."""
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    found = scan_folder(input_dir)
    if not found:
        raise VolumeError(f"no DICOM files under {input_dir}")
    series = pick_ct_series(found)
    progress(f"series {series.series_instance_uid} ({series.description or 'no description'}): "
             f"{series.images} images in {len(series.paths)} files")
    findings = run_series(series.paths, settings, progress=progress)

    out_dir.mkdir(parents=True, exist_ok=True)
    if findings.labels is not None:
        labels = findings.labels
        _write_atomically(out_dir / "labels.npy", lambda h: np.save(h, labels, allow_pickle=False))
        findings.labels_file = "labels.npy"
    document = json.dumps(findings.to_json_dict(), indent=2).encode()
    _write_atomically(out_dir / "findings.json", lambda h: h.write(document))
    _write_atomically(out_dir / "report.txt", lambda h: h.write(findings.report.encode()))
    progress(findings.report)
    progress(f"wrote {out_dir / 'findings.json'}, {out_dir / 'labels.npy'}, {out_dir / 'report.txt'}")
    return findings
