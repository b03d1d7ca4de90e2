"""`trauma-node calibrate-triage`: fit the MedSigLIP triage calibration on labelled slices.

The labels are a CSV file with a header row and the columns ``path`` (a DICOM file of
one CT slice; relative paths are taken from the CSV's folder), ``label`` (1: the slice
shows what the abnormal texts describe, 0: it does not) and, for multi-frame files,
``frame`` (1-based). The command prints how the configured and the fitted calibration
do on those slices, and the two settings to put in [pipeline.models.medsiglip].
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

from pipeline.calibration import CalibrationReport, LabelledSlice, calibrate_triage
from pipeline.settings import PipelineSettings


class LabelsError(ValueError):
    """The labels file cannot be used; the message says where and why."""


def read_labels(path: Path) -> list[LabelledSlice]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = {"path", "label"} - set(reader.fieldnames or [])
            if missing:
                raise LabelsError(f"{path}: the header needs the columns path and label "
                                  f"(missing: {', '.join(sorted(missing))})")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelsError(f"{path}: cannot read it ({exc})") from None
    slices = []
    for line, row in enumerate(rows, start=2):
        where = f"{path}, line {line}"
        label = (row.get("label") or "").strip()
        if label not in ("0", "1"):
            raise LabelsError(f"{where}: label must be 0 or 1, not {label!r}")
        file = Path((row.get("path") or "").strip())
        if not file.is_absolute():
            file = path.parent / file
        if not file.is_file():
            raise LabelsError(f"{where}: no such file {file}")
        frame = (row.get("frame") or "").strip()
        if frame and not (frame.isdigit() and int(frame) >= 1):
            raise LabelsError(f"{where}: frame must be a number from 1, not {frame!r}")
        slices.append(LabelledSlice(file, int(label), int(frame) if frame else None))
    if len({item.label for item in slices}) < 2:
        raise LabelsError(f"{path}: calibration needs slices labelled 1 (abnormal) and slices "
                          f"labelled 0 (normal)")
    return slices


def report_text(report: CalibrationReport, configured: tuple[float, float]) -> str:
    rows = [("configured", configured, report.before),
            ("fitted", (report.fit.scale, report.fit.bias), report.after)]
    lines = [f"{report.slices} labelled slices: {report.positives} abnormal, "
             f"{report.slices - report.positives} normal",
             f"{'calibration':<12} {'scale':>8} {'bias':>8} {'log-loss':>9} "
             f"{'sensitivity':>12} {'specificity':>12}   (at threshold {report.threshold:g})"]
    for name, (scale, bias), perf in rows:
        lines.append(f"{name:<12} {scale:>8.4f} {bias:>8.4f} {perf.log_loss:>9.4f} "
                     f"{perf.sensitivity:>12.2f} {perf.specificity:>12.2f}")
    lines += ["", "Put these in the config's [pipeline.models.medsiglip] table:",
              f"calibration_scale = {report.fit.scale:.6g}",
              f"calibration_bias = {report.fit.bias:.6g}"]
    return "\n".join(lines)


def run(settings: PipelineSettings, labels: Path, as_json: bool) -> tuple[int, str]:
    """(exit status, text to print). Raises LabelsError, ValueError or ModelUnavailable."""
    s = settings.models.medsiglip
    report = calibrate_triage(settings, read_labels(labels))
    if report.fit.scale <= 0:
        return 1, (f"the fitted scale is {report.fit.scale:.4g}: on these slices the abnormal texts "
                   f"do not match the abnormal slices better than the normal ones; change "
                   f"abnormal_texts / normal_texts in [pipeline.models.medsiglip], or check the labels")
    if as_json:
        return 0, json.dumps(asdict(report), indent=2)
    return 0, report_text(report, (s.calibration_scale, s.calibration_bias))
