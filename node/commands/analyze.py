"""`trauma-node analyze DIR --out OUTDIR`: the pipeline on a folder, no network.

Writes to OUTDIR:
- findings.json: the Findings record (see pipeline/README.md), label volume left out;
- labels.npy: the label volume (uint8, slices x rows x columns, in the order of
  findings.json's series.slices; 1 = hemorrhage, 2 = active extravasation);
- report.txt: the report text, also printed;
- seg.dcm and sr.dcm: the DICOM SEG and TID 1500 SR, as the node sends them to the PACS;
- sc-01.dcm...: the summary Secondary Capture images (the page, then the key images),
  pdf.dcm: the report as an Encapsulated PDF, kos.dcm: the Key Object Selection of the
  key slices (none when no blood was found), for viewers without SEG/SR support.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from pipeline import Findings, PipelineSettings, run_series
from pipeline.series import pick_ct_series, scan_folder
from pipeline.volume import VolumeError

from node.work.results import write_outputs


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

    objects = write_outputs(findings, series.paths, out_dir, series_version=1)
    progress(findings.report)
    names = ["findings.json", "labels.npy", "report.txt",
             *(path.name for paths in objects.values() for path in paths)]
    progress(f"wrote {', '.join(names)} to {out_dir}")
    return findings
