"""Calibrating MedSigLIP triage on labelled slices (Platt scaling), and the
`trauma-node calibrate-triage` command that does it with the configured model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support import tiny_models
from support.phantom import PhantomSpec, make_volume
from pipeline.backends.medsiglip_triage import platt
from node.commands.calibrate import read_labels
from pipeline.calibration import LabelledSlice, Performance, calibrate_triage, fit_platt

ROOT = Path(__file__).resolve().parents[1]
SPEC = dict(slices=20, rows=96, cols=96, pixel_spacing=(4.2, 4.2), slice_spacing=5.0,
            blood="large", blush=True)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_platt_recovers_a_known_calibration():
    rng = np.random.default_rng(7)
    margin = rng.normal(0.0, 1.5, 20_000)
    labels = (rng.random(margin.size) < platt(margin, 3.0, -1.0)).astype(int)
    fit = fit_platt(margin, labels)
    assert fit.scale == pytest.approx(3.0, abs=0.15) and fit.bias == pytest.approx(-1.0, abs=0.1)


def test_platt_stays_finite_when_the_margin_separates_the_labels():
    margin = np.array([-2.0, -1.5, -1.0, 1.0, 1.5, 2.0])
    fit = fit_platt(margin, [0, 0, 0, 1, 1, 1])
    assert 0 < fit.scale < 20 and np.isfinite(fit.bias)  # Platt's targets: no runaway scale
    with pytest.raises(ValueError, match="both kinds"):
        fit_platt(margin, [1] * 6)


@pytest.fixture(scope="module")
def labelled(phantom_factory):
    """The phantom's slices labelled as a reader would: 1 where there is blood."""
    truth = phantom_factory("calibration", **SPEC)
    _, labels, _ = make_volume(PhantomSpec(**SPEC))
    bleeding = labels.reshape(len(labels), -1).any(axis=1)
    assert bleeding.any() and not bleeding.all()
    return [LabelledSlice(path, int(b)) for path, b in zip(truth.paths, bleeding)]


def test_the_fitted_calibration_fits_the_labels_better_than_the_default(labelled):
    settings = tiny_models.model_settings(triage="medsiglip")
    report = calibrate_triage(settings, labelled)
    assert report.slices == len(labelled) and report.positives == sum(s.label for s in labelled)
    assert report.after.log_loss <= report.before.log_loss


def test_performance_at_the_threshold():
    perf = Performance.of(np.array([0.9, 0.2, 0.6, 0.4, 0.1]), np.array([1, 1, 0, 0, 0]), 0.5)
    assert (perf.sensitivity, perf.specificity) == (0.5, pytest.approx(2 / 3))
    expected = -np.mean(np.log([0.9, 0.2, 0.4, 0.6, 0.9]))
    assert perf.log_loss == pytest.approx(expected)


def test_labels_paths_are_taken_from_the_csv_folder(labelled, tmp_path):
    (tmp_path / "slices").mkdir()
    for name, item in (("a.dcm", labelled[0]), ("b.dcm", labelled[-1])):
        (tmp_path / "slices" / name).write_bytes(item.path.read_bytes())
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label,frame\nslices/a.dcm,1,\nslices/b.dcm,0,1\n")
    assert read_labels(labels) == [LabelledSlice(tmp_path / "slices" / "a.dcm", 1, None),
                                   LabelledSlice(tmp_path / "slices" / "b.dcm", 0, 1)]


def write_labels(folder: Path, labelled, rows) -> Path:
    csv = folder / "labels.csv"
    csv.write_text("\n".join(["path,label", *rows]) + "\n")
    return csv


def config(tmp_path: Path, **medsiglip) -> Path:
    extra = "".join(f"{k} = {v}\n" for k, v in medsiglip.items())
    path = tmp_path / "node.toml"
    path.write_text(f"""
[pipeline.backends]
triage = "medsiglip"

[pipeline.models]
device = "cpu"

[pipeline.models.medsiglip]
model = "{tiny_models.get('medsiglip')}"
{extra}""")
    return path


def calibrate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", "calibrate-triage", *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_the_command_prints_the_settings_to_use_or_refuses_texts_that_point_the_wrong_way(
        labelled, tmp_path):
    """With the labels as they are and turned round, the fitted scale has opposite signs:
    one run gives the settings, the other says the texts do not fit the labels."""
    runs = {}
    for name, flip in (("as labelled", 0), ("turned round", 1)):
        folder = tmp_path / name.replace(" ", "-")
        folder.mkdir()
        labels = write_labels(folder, labelled, [f"{s.path},{s.label ^ flip}" for s in labelled])
        runs[name] = (labels, calibrate("--config", str(config(tmp_path)), str(labels), "--json"))
    codes = sorted(done.returncode for _, done in runs.values())
    assert codes == [0, 1], [done.stderr for _, done in runs.values()]
    (labels, done), = [run for run in runs.values() if run[1].returncode == 0]
    (_, refused), = [run for run in runs.values() if run[1].returncode == 1]
    assert "fitted scale" in refused.stderr and "abnormal_texts" in refused.stderr

    figures = json.loads(done.stdout)
    assert figures["slices"] == len(labelled) and figures["fit"]["scale"] > 0
    assert figures["after"]["log_loss"] <= figures["before"]["log_loss"]
    # The text form ends with the two lines to paste into the config.
    text = calibrate("--config", str(config(tmp_path)), str(labels))
    tail = text.stdout.strip().splitlines()[-2:]
    assert tail[0] == f"calibration_scale = {figures['fit']['scale']:.6g}"
    assert tail[1] == f"calibration_bias = {figures['fit']['bias']:.6g}"
    # Pasted in, they are what the configured row shows next time.
    pasted = config(tmp_path, calibration_scale=tail[0].split("= ")[1],
                    calibration_bias=tail[1].split("= ")[1])
    again = json.loads(calibrate("--config", str(pasted), str(labels), "--json").stdout)
    assert again["before"]["log_loss"] == pytest.approx(figures["after"]["log_loss"], rel=1e-4)


@pytest.mark.parametrize("rows, message", [
    (["a.dcm,1"], "no such file"),
    (["{first},2"], "label must be 0 or 1"),
    (["{first},1", "{second},1"], "labelled 1 (abnormal) and slices labelled 0"),
])
def test_bad_labels_are_refused_before_any_model_runs(labelled, tmp_path, rows, message):
    names = {"first": labelled[0].path, "second": labelled[1].path}
    labels = write_labels(tmp_path, labelled, [r.format(**names) for r in rows])
    done = calibrate("--config", str(config(tmp_path)), str(labels))
    assert done.returncode == 2 and message in done.stderr
    no_header = tmp_path / "bare.csv"
    no_header.write_text(f"{labelled[0].path},1\n")
    done = calibrate("--config", str(config(tmp_path)), str(no_header))
    assert done.returncode == 2 and "the header needs the columns path and label" in done.stderr
