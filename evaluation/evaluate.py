"""`trauma-node evaluate`: the configured pipeline on every study of a labelled dataset.

Each series' result goes to OUT/series/<patient>__<series>.json as soon as it is made,
so a run that stops resumes where it was (a series already evaluated is not run again;
delete its file, or OUT, to run it again). A patient's prediction per target is that
of its least healthy series. The figures (evaluation.metrics) go to metrics.json, a
Markdown summary and PNG plots; every file says it is research use and which data and
pipeline it came from.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation import metrics
from evaluation.dataset import Dataset, SeriesEntry, Study, open_dataset
from evaluation.masks import load_mask
from evaluation.reading_metrics import format_adherence, organ_accuracy, severity_match
from pipeline import run_series
from pipeline.findings import RESEARCH_USE
from pipeline.labels import ACTIVE_EXTRAVASATION
from pipeline.probabilities import PRIORS
from pipeline.settings import PipelineSettings

log = logging.getLogger("trauma_node.evaluate")

BINARY_OF = {  # the injury each AUC is about: not healthy
    "bowel": "bowel injury", "extravasation": "active extravasation", "kidney": "kidney injury",
    "liver": "liver injury", "spleen": "spleen injury", "any_injury": "any injury"}


@dataclass
class Options:
    out: Path
    threshold: float = 0.5  # a patient is called positive for a target at this probability
    bootstrap: int = 1000
    progress: bool = True


def series_result(entry: SeriesEntry, settings: PipelineSettings) -> dict[str, Any]:
    """The pipeline on one series: probabilities, reading, volumes; Dice where a mask is."""
    started = time.perf_counter()
    try:
        findings = run_series(entry.files, settings)
    except Exception as exc:  # a series the pipeline refuses is recorded, not fatal
        return {"patient_id": entry.patient_id, "series_id": entry.series_id,
                "error": f"{type(exc).__name__}: {exc}"}
    result: dict[str, Any] = {
        "patient_id": entry.patient_id, "series_id": entry.series_id,
        "assessed": findings.assessment.assessed, "reasons": findings.assessment.reasons,
        "probabilities": findings.probabilities, "reading": findings.reading,
        "volumes_ml": findings.volumes_ml, "risk_tier": findings.risk_tier,
        "seconds": round(time.perf_counter() - started, 2),
        "backends": findings.provenance.backend_summary,
    }
    if entry.hemorrhage_mask is not None and findings.labels is not None:
        result["mask"] = mask_agreement(load_mask(entry.hemorrhage_mask, findings.series),
                                        findings.labels, findings.series["voxel_volume_mm3"])
    return result


def mask_agreement(truth: np.ndarray, found: np.ndarray, voxel_mm3: float) -> dict[str, Any]:
    """Blood (any label) and active extravasation: Dice, and volumes in mL both ways."""
    out = {}
    for name, pick in (("hemorrhage", lambda a: a > 0),
                       ("active_extravasation", lambda a: a == ACTIVE_EXTRAVASATION)):
        t, f = pick(truth), pick(found)
        truth_ml, found_ml = t.sum() * voxel_mm3 / 1000, f.sum() * voxel_mm3 / 1000
        out[name] = {"dice": metrics.dice(t, f), "truth_ml": round(float(truth_ml), 3),
                     "found_ml": round(float(found_ml), 3),
                     "error_percent": (round(float(100 * (found_ml - truth_ml) / truth_ml), 1)
                                       if truth_ml else None)}
    return out


def patient_targets(results: list[dict[str, Any]]) -> tuple[dict[str, dict[str, float]], str]:
    """The least healthy series per target; priors when no series gave a result."""
    usable = [r["probabilities"]["targets"] for r in results if "probabilities" in r]
    if not usable:
        return {name: dict(levels) for name, levels in PRIORS.items()}, "failed"
    targets = {name: min((t[name] for t in usable), key=lambda levels: levels["healthy"])
               for name in PRIORS}
    assessed = any(r.get("assessed") for r in results)
    return targets, "assessed" if assessed else "not assessed"


def _stored(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run(dataset: Dataset, settings: PipelineSettings, options: Options) -> dict[str, Any]:
    """Evaluate every study (resuming), then write the figures; returns metrics.json's content."""
    store = options.out / "series"
    store.mkdir(parents=True, exist_ok=True)
    entries = [(study, entry) for study in dataset.studies for entry in study.series]
    bar = _progress(len(entries), options.progress)
    by_patient: dict[str, list[dict[str, Any]]] = {}
    reused = 0
    for study, entry in entries:
        path = store / f"{_safe(study.patient_id)}__{_safe(entry.series_id)}.json"
        result = _stored(path)
        if result is None:
            result = series_result(entry, settings)
            path.write_text(json.dumps(result, indent=1, default=_plain))
        else:
            reused += 1
        by_patient.setdefault(study.patient_id, []).append(result)
        bar.update(1)
    bar.close()
    figures = _figures(dataset, by_patient, options)
    figures["run"] = {"series": len(entries), "reused_from_earlier_run": reused}
    _write(options.out, figures, dataset, by_patient, options)
    return figures


def _figures(dataset: Dataset, by_patient: dict[str, list[dict[str, Any]]],
             options: Options) -> dict[str, Any]:
    studies: list[Study] = [s for s in dataset.studies if s.patient_id in by_patient]
    predictions, states = zip(*(patient_targets(by_patient[s.patient_id]) for s in studies))
    labels = [s.labels for s in studies]
    per_target = {}
    for target in metrics.TARGETS:
        y = np.array([metrics.true_class(lab, target) != "healthy" for lab in labels])
        p = np.array([1.0 - metrics.predicted(t, target)[0] for t in predictions])
        rounds = options.bootstrap
        per_target[target] = {
            "positives": int(y.sum()), "negatives": int((~y).sum()),
            "auc": _interval(metrics.bootstrap(metrics.auc, y, p, rounds)),
            "sensitivity": _interval(metrics.bootstrap(
                lambda a, b: metrics.sensitivity(a, b, options.threshold), y, p, rounds)),
            "specificity": _interval(metrics.bootstrap(
                lambda a, b: metrics.specificity(a, b, options.threshold), y, p, rounds)),
        }
    series = [r for results in by_patient.values() for r in results]
    masks = [r["mask"] for r in series if "mask" in r]
    return {
        "research_use": RESEARCH_USE,
        "dataset": {"root": str(dataset.root), "layout": dataset.layout,
                    "patients": len(studies), "skipped": dataset.problems},
        "pipeline": sorted({r["backends"] for r in series if "backends" in r}),
        "made_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "patients": {"assessed": states.count("assessed"),
                     "not_assessed": states.count("not assessed"),
                     "failed": states.count("failed")},
        "series_failed": [{"patient_id": r["patient_id"], "series_id": r["series_id"],
                           "error": r["error"]} for r in series if "error" in r],
        "rsna2023_log_loss": metrics.rsna_score(labels, predictions),
        "threshold": options.threshold,
        "targets": per_target,
        "masks": _mask_summary(masks),
        "reading": _reading_summary(series, {s.patient_id: s.labels for s in studies}),
        "predictions": {s.patient_id: t for s, t in zip(studies, predictions)},
    }


def _mask_summary(masks: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"series_with_masks": len(masks)}
    for name in ("hemorrhage", "active_extravasation"):
        dices = [m[name]["dice"] for m in masks if m[name]["dice"] is not None]
        errors = [abs(m[name]["error_percent"]) for m in masks if m[name]["error_percent"] is not None]
        out[name] = {"mean_dice": round(float(np.mean(dices)), 4) if dices else None,
                     "median_abs_volume_error_percent": round(float(np.median(errors)), 1)
                     if errors else None, "series": len(dices)}
    return out


def _reading_summary(series: list[dict[str, Any]], labels: dict[str, Any]) -> dict[str, Any]:
    """The seed card's three figures, over the series whose reading a model wrote (the rules
    baseline reads from the segmentation: nothing to measure)."""
    from training.reading_data import target_reading  # what the labels imply, as trained

    written = [r for r in series if (r.get("reading") or {}).get("raw_texts")]
    if not written:
        return {"series": 0, "note": "no reading was written by a model"}
    readings = [r["reading"] for r in written]
    expected = [target_reading(labels[r["patient_id"]]) for r in written]
    return {
        "series": len(written),
        "format_adherence": round(format_adherence(readings), 4),
        "format_adherence_without_repair": round(format_adherence(readings, strict=True), 4),
        "organ_accuracy": round(organ_accuracy(readings, [e["organs_involved"] for e in expected]), 4),
        "severity_match": round(severity_match(readings, [e["severity_estimate"] for e in expected]), 4),
    }


def _interval(value: tuple[float | None, float | None, float | None]) -> dict[str, float | None]:
    point, low, high = value
    r = (lambda v: None if v is None else round(v, 4))
    return {"value": r(point), "ci95_low": r(low), "ci95_high": r(high)}


def _write(out: Path, figures: dict[str, Any], dataset: Dataset,
           by_patient: dict[str, list[dict[str, Any]]], options: Options) -> None:
    (out / "metrics.json").write_text(json.dumps(figures, indent=1, default=_plain))
    (out / "summary.md").write_text(summary_markdown(figures))
    from evaluation.plots import reliability_plot, roc_plots  # matplotlib: the evaluation extra

    studies = [s for s in dataset.studies if s.patient_id in by_patient]
    roc_plots(out / "roc.png", studies, figures["predictions"], figures["targets"])
    reliability_plot(out / "reliability.png", studies, figures["predictions"])


def summary_markdown(figures: dict[str, Any]) -> str:
    def cell(v: dict[str, Any]) -> str:
        if v["value"] is None:
            return "n/a"
        ci = (f" ({v['ci95_low']:.2f}-{v['ci95_high']:.2f})" if v["ci95_low"] is not None else "")
        return f"{v['value']:.2f}{ci}"

    loss = figures["rsna2023_log_loss"]
    lines = [
        "# Evaluation", "", f"{figures['research_use']}", "",
        f"Dataset: `{figures['dataset']['root']}` ({figures['dataset']['layout']}), "
        f"{figures['dataset']['patients']} patients ({figures['patients']['assessed']} assessed, "
        f"{figures['patients']['not_assessed']} not assessed: priors used, "
        f"{figures['patients']['failed']} failed); {len(figures['dataset']['skipped'])} rows or "
        "files skipped (metrics.json lists them).",
        f"Pipeline: {'; '.join(figures['pipeline']) or 'n/a'}. Made {figures['made_at']}.", "",
        f"RSNA 2023 metric (mean sample-weighted log loss, lower is better): **{loss['score']:.4f}**",
        "", "| target | log loss | positives | AUC (95% CI) | sensitivity | specificity |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for target, row in figures["targets"].items():
        lines.append(f"| {BINARY_OF[target]} | {loss[target]:.4f} | {row['positives']}/"
                     f"{row['positives'] + row['negatives']} | {cell(row['auc'])} | "
                     f"{cell(row['sensitivity'])} | {cell(row['specificity'])} |")
    lines += ["", f"Sensitivity and specificity at probability {figures['threshold']:g}; "
              "intervals by bootstrap over patients. The embedded baseline's probabilities are "
              "uncalibrated (pipeline.probabilities)."]
    reading = figures["reading"]
    if reading["series"]:
        lines += ["", f"Reading ({reading['series']} series read by a model): JSON format adherence "
                  f"{reading['format_adherence']:.2f} ({reading['format_adherence_without_repair']:.2f} "
                  f"without repair), organ identification {reading['organ_accuracy']:.2f}, severity "
                  f"match {reading['severity_match']:.2f} (against what the labels imply: "
                  "training/reading_data.py)."]
    masks = figures["masks"]
    if masks["series_with_masks"]:
        lines += ["", f"Masks: {masks['series_with_masks']} series.", "",
                  "| label | series | mean Dice | median absolute volume error % |",
                  "| --- | --- | --- | --- |"]
        for name in ("hemorrhage", "active_extravasation"):
            m = masks[name]
            lines.append(f"| {name.replace('_', ' ')} | {m['series']} | {m['mean_dice']} | "
                         f"{m['median_abs_volume_error_percent']} |")
    return "\n".join(lines) + "\n"


class _NoBar:
    def update(self, _n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, shown: bool):
    if not shown:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="series", desc="evaluate")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in name)


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


def evaluate(dataset_path: Path, settings: PipelineSettings, options: Options,
             layout: str = "auto") -> dict[str, Any]:
    dataset = open_dataset(dataset_path, layout)
    for problem in dataset.problems:
        log.warning("dataset: %s", problem)
    return run(dataset, settings, options)
