"""`trauma-node evaluate` on a site's labelled studies: the RSNA 2023 metric, AUC with
intervals, mask agreement, plots; a second run resumes instead of starting again."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np

from support.nodes import ROOT
from support.datasets_support import write_site
from evaluation.dataset import Labels
from evaluation.metrics import auc, rsna_score

ASSESSABLE = dict(slices=40, rows=128, cols=128, pixel_spacing=(3.125, 3.125), slice_spacing=5.0)
PNG = b"\x89PNG\r\n\x1a\n"


def labels(**injuries: int) -> Labels:
    from support.datasets_support import healthy_row

    row = healthy_row("x", **injuries)
    return Labels({k: int(v) for k, v in row.items() if k != "patient_id"})


def test_rsna_metric_against_hand_computed_values():
    """Uniform predictions: ln 2 per binary target, ln 3 per three-level one, and any_injury
    at 2/3 weighted 6 for the injured patient and 1 for the healthy one."""
    uniform = {"bowel": {"healthy": .5, "injury": .5}, "extravasation": {"healthy": .5, "injury": .5},
               **{o: {"healthy": 1 / 3, "low": 1 / 3, "high": 1 / 3} for o in ("kidney", "liver", "spleen")}}
    truth = [labels(spleen_high=1), labels()]
    score = rsna_score(truth, [uniform, uniform])
    any_injury = (6 * -math.log(2 / 3) + 1 * -math.log(1 / 3)) / 7
    assert score["bowel"] == round(math.log(2), 4) and score["spleen"] == round(math.log(3), 4)
    assert score["any_injury"] == round(any_injury, 4)
    expected = (2 * math.log(2) + 3 * math.log(3) + any_injury) / 6
    assert abs(score["score"] - expected) < 1e-3
    # Weights: a confident miss of the injured spleen costs 4x a miss of a healthy one.
    sure_healthy = {**uniform, "spleen": {"healthy": .98, "low": .01, "high": .01}}
    one_miss = rsna_score([labels(spleen_high=1), labels()], [sure_healthy, sure_healthy])["spleen"]
    assert abs(one_miss - (4 * -math.log(.01) + -math.log(.98)) / 5) < 1e-3
    assert auc(np.array([1, 0, 1, 0]), np.array([.9, .1, .8, .8])) == 0.875


def test_evaluate_a_site_dataset_then_resume(tmp_path, phantom_factory):
    cases = {
        "P1": (phantom_factory("ev-blush", **ASSESSABLE, blood="large", blush=True),
               {"spleen_low": 1, "extravasation_injury": 1}),
        "P2": (phantom_factory("ev-small", **ASSESSABLE, blood="small", seed=5), {"liver_low": 1}),
        "P3": (phantom_factory("ev-clean", **ASSESSABLE, seed=6), {}),
        "P4": (phantom_factory("ev-clean2", **ASSESSABLE, seed=7), {}),
    }
    write_site(tmp_path / "site", cases)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "node.cli", "evaluate", str(tmp_path / "site"),
               "--out", str(out), "--bootstrap", "200", "--quiet"]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "RSNA 2023 metric" in first.stdout

    figures = json.loads((out / "metrics.json").read_text())
    assert figures["research_use"].startswith("RESEARCH USE ONLY")
    assert figures["dataset"]["patients"] == 4 and figures["patients"]["assessed"] == 4
    assert figures["run"] == {"series": 4, "reused_from_earlier_run": 0}
    # The blush is found and the clean studies are not called injured: extravasation is told
    # apart perfectly on this small set, and the metric is far better than chance (~0.9).
    extravasation = figures["targets"]["extravasation"]
    assert extravasation["positives"] == 1 and extravasation["auc"]["value"] == 1.0
    assert figures["rsna2023_log_loss"]["score"] < 0.6
    assert figures["predictions"]["P3"]["extravasation"]["injury"] < 0.1
    # The masks agree with the phantom's truth, as the pipeline's own benchmark finds.
    masks = figures["masks"]
    assert masks["series_with_masks"] == 4
    assert masks["hemorrhage"]["mean_dice"] > 0.8
    assert masks["hemorrhage"]["median_abs_volume_error_percent"] < 15
    for name in ("roc.png", "reliability.png"):
        assert (out / name).read_bytes()[:8] == PNG
    summary = (out / "summary.md").read_text()
    assert "RSNA 2023 metric" in summary and "| active extravasation |" in summary

    # Resumable: nothing is run again; a series whose result is removed is run alone.
    (out / "series" / f"P2__{cases['P2'][0].spec.series_uid}.json").unlink()
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    figures2 = json.loads((out / "metrics.json").read_text())
    assert figures2["run"] == {"series": 4, "reused_from_earlier_run": 3}
    assert figures2["rsna2023_log_loss"] == figures["rsna2023_log_loss"]


def test_bad_dataset_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "node.cli", "evaluate", str(tmp_path), "--quiet"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "neither train.csv (RSNA 2023) nor labels.csv" in result.stderr


def test_reading_figures_count_only_what_a_model_wrote():
    """The seed card's three figures, against what the labels imply (training.reading_data):
    a reply in the format naming the right organs and severity, one repaired, one that is no
    JSON; the rules baseline's readings are left out."""
    from evaluation.evaluate import _reading_summary

    good = ('{"injury_pattern": "low-grade splenic injury", "organs_involved": ["spleen"], '
            '"bleeding_description": "perisplenic blood", "severity_estimate": "mild", '
            '"differential_diagnosis": ["solid-organ injury"]}')
    series = [
        {"patient_id": "A", "reading": {"raw_texts": [good]}},
        {"patient_id": "B", "reading": {"raw_texts": ["```json\n" + good + "\n```"]}},
        {"patient_id": "C", "reading": {"raw_texts": ["I cannot tell."]}},
        {"patient_id": "D", "reading": {"injury_pattern": "rules"}},  # no model wrote it
    ]
    truth = {"A": labels(spleen_low=1), "B": labels(), "C": labels(), "D": labels()}
    figures = _reading_summary(series, truth)
    assert figures["series"] == 3
    assert figures["format_adherence"] == round(2 / 3, 4)
    assert figures["format_adherence_without_repair"] == round(1 / 3, 4)
    assert figures["organ_accuracy"] == round(1 / 3, 4)  # B's labels say no organ is injured
    assert figures["severity_match"] == round(1 / 3, 4)
    assert _reading_summary(series[3:], truth)["series"] == 0
