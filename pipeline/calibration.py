"""Calibrating MedSigLIP triage on labelled slices (Platt scaling).

The triage score is sigmoid(scale x margin + bias), the margin being how much better
a slice matches the abnormal texts than the normal ones (backends/medsiglip_triage).
With the defaults (1, 0) a score of 0.5 only means "as abnormal as normal"; fitted
here on slices a radiologist labelled (1: shows what the abnormal texts describe,
0: does not), the score becomes a probability, and the threshold one too.

The fit is Platt's (1999): logistic regression on the margin, with the targets
(N+ + 1) / (N+ + 2) and 1 / (N- + 2) rather than 1 and 0, so that a set the margin
separates perfectly does not drive the scale to infinity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.backends.medsiglip_triage import MedSiglipTriage, margins, platt
from pipeline.settings import PipelineSettings
from pipeline.volume import read_hu


@dataclass(frozen=True)
class LabelledSlice:
    path: Path
    label: int  # 1: abnormal, 0: normal
    frame: int | None = None  # 1-based, for multi-frame files


@dataclass(frozen=True)
class Fit:
    scale: float
    bias: float


@dataclass(frozen=True)
class Performance:
    """How scores of one calibration do on the labelled slices."""

    log_loss: float
    sensitivity: float  # at the threshold
    specificity: float

    @classmethod
    def of(cls, scores: np.ndarray, labels: np.ndarray, threshold: float) -> "Performance":
        p = np.clip(scores, 1e-12, 1 - 1e-12)
        loss = float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
        chosen = scores >= threshold
        positive, negative = labels == 1, labels == 0
        return cls(loss, float(np.mean(chosen[positive])), float(np.mean(~chosen[negative])))


@dataclass(frozen=True)
class CalibrationReport:
    slices: int
    positives: int
    threshold: float
    before: Performance  # with the scale and bias configured now
    fit: Fit
    after: Performance


def _loss(margin: np.ndarray, targets: np.ndarray, a: float, b: float) -> float:
    z = a * margin + b
    # -[t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))], without overflow
    return float(np.sum(targets * np.logaddexp(0.0, -z) + (1 - targets) * np.logaddexp(0.0, z)))


def fit_platt(margin: Sequence[float], labels: Sequence[int], iterations: int = 100) -> Fit:
    """Platt scaling: (scale, bias) of sigmoid(scale x margin + bias), by Newton's method
    with a backtracking line search."""
    m = np.asarray(margin, dtype=float)
    y = np.asarray(labels, dtype=float)
    positives, negatives = float(y.sum()), float(len(y) - y.sum())
    if positives == 0 or negatives == 0:
        raise ValueError("calibration needs labelled slices of both kinds (abnormal and normal)")
    targets = np.where(y > 0, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    a, b = 0.0, float(np.log((positives + 1) / (negatives + 1)))
    loss = _loss(m, targets, a, b)
    for _ in range(iterations):
        p = platt(m, a, b)
        gradient = np.array([np.sum((p - targets) * m), np.sum(p - targets)])
        w = p * (1 - p)
        hessian = np.array([[np.sum(w * m * m), np.sum(w * m)], [np.sum(w * m), np.sum(w)]])
        step = np.linalg.solve(hessian + 1e-9 * np.eye(2), gradient)
        length = 1.0
        while length > 1e-8:
            trial = _loss(m, targets, a - length * step[0], b - length * step[1])
            if trial <= loss:
                break
            length /= 2
        else:
            break  # no step lowers the loss: at the minimum
        a, b = a - length * step[0], b - length * step[1]
        improvement, loss = loss - trial, trial
        if improvement < 1e-10 * max(1.0, loss):
            break
    return Fit(float(a), float(b))


def slice_margins(settings: PipelineSettings, slices: Sequence[LabelledSlice]) -> np.ndarray:
    """The triage margin of each labelled slice, scored as triage scores a series."""
    images = []
    for item in slices:
        frames = read_hu(item.path)
        if item.frame is None and len(frames) > 1:
            raise ValueError(f"{item.path}: {len(frames)} frames; say which one (the frame column)")
        index = (item.frame or 1) - 1
        if not 0 <= index < len(frames):
            raise ValueError(f"{item.path}: no frame {item.frame} (it has {len(frames)})")
        images.append(frames[index])
    shapes = {image.shape for image in images}
    notes: list[str] = []
    triage = MedSiglipTriage(settings)
    abnormal = len(settings.models.medsiglip.abnormal_texts)
    if len(shapes) == 1:
        return margins(triage.logits(np.stack(images), notes), abnormal)
    # Slices of different sizes: one at a time (the processor resizes each anyway).
    return np.concatenate([margins(triage.logits(image[None], notes), abnormal) for image in images])


def calibrate_triage(settings: PipelineSettings, slices: Sequence[LabelledSlice]) -> CalibrationReport:
    s = settings.models.medsiglip
    labels = np.array([item.label for item in slices], dtype=int)
    margin = slice_margins(settings, slices)
    fit = fit_platt(margin, labels)
    return CalibrationReport(
        slices=len(slices), positives=int(labels.sum()), threshold=s.threshold,
        before=Performance.of(platt(margin, s.calibration_scale, s.calibration_bias), labels, s.threshold),
        fit=fit, after=Performance.of(platt(margin, fit.scale, fit.bias), labels, s.threshold))
