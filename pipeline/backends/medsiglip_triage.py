"""MedSigLIP triage: every slice scored zero-shot against text candidates.

Each slice (soft-tissue window, centre 50 / width 400 HU, grey to RGB, resized
by the processor) gets SigLIP's logit against every candidate text. The
abnormal and the normal candidates are pooled per class by log-mean-exp, so a
class's score does not grow with its number of texts, and

    score = sigmoid(calibration_scale * (abnormal - normal) + calibration_bias)

(Platt scaling). With the defaults (1, 0) a score of 0.5 means the slice
matches the abnormal texts as well as the normal ones, whatever their counts;
fitted on labelled slices, the score is a probability and the threshold one
too. The hackathon app summed four "abnormal" softmax labels out of five, so a
slice without any signal scored 0.8 against a 0.25 threshold: everything
passed. Slices at or above ``threshold``, the best ``triage.max_slices`` of
them, go on in anatomical order.
"""

from __future__ import annotations

import numpy as np

from pipeline.backends.hu_triage import choose_slices
from pipeline.findings import TriageResult
from pipeline.models.imaging import slice_rgb
from pipeline.models.loading import in_batches
from pipeline.settings import PipelineSettings
from pipeline.stages import StageContext


def log_mean_exp(logits: np.ndarray) -> np.ndarray:
    """Per row, log(mean(exp(x))): a soft maximum that ignores how many columns there are."""
    top = logits.max(axis=1, keepdims=True)
    return (top + np.log(np.mean(np.exp(logits - top), axis=1, keepdims=True)))[:, 0]


def margins(logits: np.ndarray, abnormal: int) -> np.ndarray:
    """Per slice, how much better it matches the abnormal texts (the first ``abnormal``
    columns of the (slices, texts) logits) than the normal ones."""
    return log_mean_exp(logits[:, :abnormal]) - log_mean_exp(logits[:, abnormal:])


def platt(margin: np.ndarray, scale: float, bias: float) -> np.ndarray:
    """sigmoid(scale x margin + bias), written with tanh so that no exp overflows."""
    return 0.5 * (1.0 + np.tanh((scale * np.asarray(margin, dtype=float) + bias) / 2.0))


def calibrated_scores(logits: np.ndarray, abnormal: int, scale: float, bias: float) -> np.ndarray:
    """Scores in (0, 1) from (slices, texts) logits whose first ``abnormal`` columns are abnormal."""
    return platt(margins(logits, abnormal), scale, bias)


class MedSiglipTriage:
    name = "medsiglip"
    version = "1.0"
    description = "MedSigLIP zero-shot slice triage (calibrated two-class score)"

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings

    def logits(self, hu: np.ndarray, notes: list[str]) -> np.ndarray:
        """(slices, texts) logits of every slice of hu against the abnormal, then the normal texts."""
        from pipeline.models.medsiglip import medsiglip

        models = self.settings.models
        s = models.medsiglip
        model = medsiglip(models)
        texts = s.abnormal_texts + s.normal_texts

        def score(chunk: list[int]) -> np.ndarray:  # windowed RGB made one batch at a time
            images = [slice_rgb(hu, k, models.window_center, models.window_width) for k in chunk]
            return model.image_text_logits(images, texts, len(chunk))

        return np.concatenate(in_batches(list(range(hu.shape[0])), s.batch_size, score, notes,
                                         "triage"), axis=0)

    def run(self, context: StageContext) -> TriageResult:
        from pipeline.models.medsiglip import medsiglip

        models = self.settings.models
        s = models.medsiglip
        model = medsiglip(models)
        logits = self.logits(context.volume.hu, context.notes)
        scores = calibrated_scores(logits, len(s.abnormal_texts), s.calibration_scale, s.calibration_bias)
        chosen = choose_slices(scores, s.threshold, self.settings.triage.max_slices)
        method = (f"{self.description}: {model.describe()}; score = sigmoid({s.calibration_scale:g} x "
                  f"(log-mean-exp of {len(s.abnormal_texts)} abnormal - {len(s.normal_texts)} normal "
                  f"text logits) + {s.calibration_bias:g})")
        return TriageResult(scores=[round(float(v), 4) for v in scores], chosen=chosen,
                            threshold=s.threshold, method=method)
