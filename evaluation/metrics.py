"""The figures of an evaluation: the RSNA 2023 metric, AUC, sensitivity and specificity
with bootstrap intervals, and mask overlap.

The RSNA 2023 Abdominal Trauma Detection metric is the mean over six targets (bowel,
extravasation, kidney, liver, spleen, any_injury) of a sample-weighted log loss: each
patient's row is weighted by its true class (healthy 1; bowel injury 2; extravasation
injury 6; low 2 and high 4 for kidney, liver and spleen; any_injury 6), the predicted
probabilities of a target are scaled to sum to 1 and clipped at 1e-15, and any_injury is
predicted as the largest chance that any other target is not healthy.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from evaluation.dataset import BINARY, LEVELS, ORGANS_3, Labels

EPS = 1e-15
TARGETS = (*BINARY, *ORGANS_3, "any_injury")
CLASS_WEIGHTS = {
    "bowel": {"healthy": 1, "injury": 2},
    "extravasation": {"healthy": 1, "injury": 6},
    **{organ: {"healthy": 1, "low": 2, "high": 4} for organ in ORGANS_3},
    "any_injury": {"healthy": 1, "injury": 6},
}


def classes(target: str) -> tuple[str, ...]:
    return LEVELS if target in ORGANS_3 else ("healthy", "injury")


def true_class(labels: Labels, target: str) -> str:
    if target == "any_injury":
        return "injury" if labels.any_injury else "healthy"
    return labels.level(target)


def predicted(targets: dict[str, dict[str, float]], target: str) -> np.ndarray:
    """One patient's probabilities of a target, in classes() order."""
    if target == "any_injury":
        p = max(1.0 - levels["healthy"] for name, levels in targets.items())
        return np.array([1.0 - p, p])
    return np.array([targets[target][c] for c in classes(target)], dtype=float)


def weighted_log_loss(truth: Sequence[str], probs: np.ndarray, target: str) -> float:
    names = classes(target)
    probs = np.clip(probs / probs.sum(axis=1, keepdims=True), EPS, 1 - EPS)
    index = np.array([names.index(t) for t in truth])
    weights = np.array([CLASS_WEIGHTS[target][t] for t in truth], dtype=float)
    losses = -np.log(probs[np.arange(len(truth)), index])
    return float(np.sum(weights * losses) / np.sum(weights))


def rsna_score(labels: Sequence[Labels], targets: Sequence[dict[str, dict[str, float]]]
               ) -> dict[str, float]:
    """Per-target weighted log loss and their mean ("score"); lower is better."""
    out = {}
    for target in TARGETS:
        truth = [true_class(lab, target) for lab in labels]
        probs = np.stack([predicted(t, target) for t in targets])
        out[target] = round(weighted_log_loss(truth, probs, target), 4)
    out["score"] = round(float(np.mean([out[t] for t in TARGETS])), 4)
    return out


def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """Area under the ROC curve (the Mann-Whitney U, ties counted half); None with one class."""
    y = np.asarray(y, dtype=bool)
    positives, negatives = p[y], p[~y]
    if len(positives) == 0 or len(negatives) == 0:
        return None
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positives) * len(negatives)))


def roc_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every threshold, from (0, 0) to (1, 1)."""
    y = np.asarray(y, dtype=bool)
    thresholds = np.r_[np.inf, np.unique(p)[::-1]]
    tpr = np.array([(p[y] >= t).mean() if y.any() else 0.0 for t in thresholds])
    fpr = np.array([(p[~y] >= t).mean() if (~y).any() else 0.0 for t in thresholds])
    return fpr, tpr


def sensitivity(y: np.ndarray, p: np.ndarray, threshold: float) -> float | None:
    y = np.asarray(y, dtype=bool)
    return float((p[y] >= threshold).mean()) if y.any() else None


def specificity(y: np.ndarray, p: np.ndarray, threshold: float) -> float | None:
    y = np.asarray(y, dtype=bool)
    return float((p[~y] < threshold).mean()) if (~y).any() else None


def bootstrap(statistic: Callable[[np.ndarray, np.ndarray], float | None], y: np.ndarray,
              p: np.ndarray, rounds: int = 1000, seed: int = 0
              ) -> tuple[float | None, float | None, float | None]:
    """The statistic and its 95% percentile interval over patients resampled with replacement
    (resamples where it is undefined, e.g. one class only, are left out)."""
    value = statistic(y, p)
    if value is None or rounds <= 0:
        return value, None, None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        pick = rng.integers(0, len(y), len(y))
        v = statistic(y[pick], p[pick])
        if v is not None:
            values.append(v)
    if not values:
        return value, None, None
    low, high = np.percentile(values, [2.5, 97.5])
    return value, float(low), float(high)


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """Dice of two boolean masks; None when both are empty (nothing to overlap)."""
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
