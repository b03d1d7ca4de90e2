"""The evaluation's plots: ROC per target, and a reliability diagram (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from evaluation import metrics  # noqa: E402
from evaluation.dataset import Study  # noqa: E402
from pipeline.findings import RESEARCH_USE  # noqa: E402


def _y_p(studies: Sequence[Study], predictions: dict[str, Any], target: str
         ) -> tuple[np.ndarray, np.ndarray]:
    y = np.array([metrics.true_class(s.labels, target) != "healthy" for s in studies])
    p = np.array([1.0 - metrics.predicted(predictions[s.patient_id], target)[0] for s in studies])
    return y, p


def roc_plots(path: Path, studies: Sequence[Study], predictions: dict[str, Any],
              per_target: dict[str, Any]) -> None:
    figure, axes = plt.subplots(2, 3, figsize=(12, 8))
    for ax, target in zip(axes.flat, metrics.TARGETS):
        y, p = _y_p(studies, predictions, target)
        auc = per_target[target]["auc"]["value"]
        if y.any() and (~y).any():
            fpr, tpr = metrics.roc_curve(y, p)
            ax.plot(fpr, tpr, label=f"AUC {auc:.2f}")  # straight between points: ties count half
            ax.legend(loc="lower right")
        else:
            ax.text(0.5, 0.5, "one class only: no ROC", ha="center", va="center")
        ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
        ax.set_title(f"{target} ({int(y.sum())} positive of {len(y)})")
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
    figure.suptitle(f"ROC per target - {RESEARCH_USE}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def reliability_plot(path: Path, studies: Sequence[Study], predictions: dict[str, Any],
                     bins: int = 10) -> None:
    """Predicted probability of 'not healthy' against the observed rate, every target pooled."""
    ys, ps = zip(*(_y_p(studies, predictions, t) for t in metrics.TARGETS))
    y, p = np.concatenate(ys), np.concatenate(ps)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    centres, observed, counts = [], [], []
    for b in range(bins):
        chosen = which == b
        if chosen.any():
            centres.append(p[chosen].mean())
            observed.append(y[chosen].mean())
            counts.append(int(chosen.sum()))
    figure, ax = plt.subplots(figsize=(6, 6))
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfectly calibrated")
    ax.plot(centres, observed, marker="o", label="this run")
    for x, o, n in zip(centres, observed, counts):
        ax.annotate(str(n), (x, o), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("predicted probability of injury")
    ax.set_ylabel("observed rate")
    ax.set_title(f"Reliability, all targets pooled\n{RESEARCH_USE}", fontsize=9)
    ax.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
