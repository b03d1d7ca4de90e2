"""MedGemma reading: the triaged slices in one user turn, JSON out.

The slices chosen by triage (at most the model's slice cap, the best-scoring
ones) go to MedGemma as interleaved text and image items in anatomical order
(cranial first), each labelled with its slice index and z position in mm;
with ``context_slices`` > 0 each image carries its neighbours in the red and
blue channels (2.5D). The reply must be the JSON of pipeline.reading_json: it
is validated, repaired when that is safe, else asked for once more; the raw
text and whether it parsed are kept in the reading. If the model runs out of
memory, the cache is emptied and the reading retried with half the slices,
down to one, and the Findings say so; if it never parses, the reading falls
back to the rules over the segmentation, labelled as such.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from pipeline.backends.rules_reading import RulesReading
from pipeline.findings import TriageResult
from pipeline.models.imaging import slice_rgb
from pipeline.quantification import Quantification
from pipeline.reading_json import READING_KEYS, SCHEMA_TEXT, parse_reading
from pipeline.settings import ModelSettings, PipelineSettings
from pipeline.stages import StageContext

SYSTEM = ("You are an expert radiologist reading an abdominal trauma CT for a research study. "
          "Describe only what the images show.")
INSTRUCTIONS = ("Assess traumatic injury: hemoperitoneum, solid-organ injury of the liver, spleen and "
                "kidneys, bowel injury and active contrast extravasation. Reply with only one JSON object, "
                "no other text, of this form: " + SCHEMA_TEXT)


def pick_slices(triage: TriageResult, cap: int) -> tuple[list[int], str | None]:
    """The slices to read, in anatomical order: the chosen ones, the best ``cap`` of them.

    When triage chose none, the ``cap`` best-scoring slices are read anyway (a model
    may see what the threshold missed), and the note says so.
    """
    scores = np.asarray(triage.scores, dtype=float)
    pool = list(triage.chosen)
    note = None
    if not pool:
        pool = list(range(len(scores)))
        note = "no slice reached the triage threshold; the highest-scoring slices were read"
    best = sorted(pool, key=lambda k: (-scores[k], k))[:cap]
    return sorted(best), note


def z_mm(context: StageContext, k: int) -> float:
    """The slice's position along the patient's head-foot axis (LPS z, mm)."""
    return float(context.volume.slices[k].position[2])


def reading_messages(context: StageContext, indices: Sequence[int], context_slices: int,
                     window: tuple[float, float]) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """The chat messages and their images, one text label before each image, cranial first."""
    indices = sorted(indices)
    hu = context.volume.hu
    intro = (f"{len(indices)} axial slices of one abdominal CT series, soft-tissue window "
             f"(level {window[0]:g} HU, width {window[1]:g} HU), in anatomical order from cranial to "
             f"caudal; each is labelled with its slice index and z position."
             + (f" Each image holds the slice {context_slices} above in red and {context_slices} below "
                f"in blue (2.5D)." if context_slices else ""))
    content: list[dict[str, Any]] = [{"type": "text", "text": intro}]
    images = []
    for k in indices:
        content.append({"type": "text", "text": f"Slice {k} (z = {z_mm(context, k):.1f} mm):"})
        content.append({"type": "image"})
        images.append(slice_rgb(hu, k, window[0], window[1], context_slices))
    content.append({"type": "text", "text": INSTRUCTIONS})
    messages = [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
                {"role": "user", "content": content}]
    return messages, images


def series_prompt(context: StageContext, indices: Sequence[int],
                  models: ModelSettings) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """The messages and images the reading sends for these slices, with the node's settings
    (window, 2.5D context); the fine-tuning data (training.reading_data) is built by this too."""
    return reading_messages(context, indices, models.medgemma.context_slices,
                            (models.window_center, models.window_width))


def reask_messages(messages: list[dict[str, Any]], reply: str, error: str) -> list[dict[str, Any]]:
    return messages + [
        {"role": "assistant", "content": [{"type": "text", "text": reply}]},
        {"role": "user", "content": [{"type": "text", "text":
            f"That reply was not usable: {error}. Reply again with only the JSON object, with exactly "
            f"the keys {', '.join(READING_KEYS)}."}]},
    ]


class MedGemmaReading:
    name = "medgemma"
    version = "1.0"
    description = "MedGemma 1.5 multi-slice reading (images in anatomical order, JSON validated)"

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings

    def model(self) -> Any:
        from pipeline.models.medgemma import medgemma

        return medgemma(self.settings.models)

    def run(self, context: StageContext, triage: TriageResult,
            quantification: Quantification) -> dict[str, Any]:
        from pipeline.models.loading import is_out_of_memory, release_memory

        models = self.settings.models
        s = models.medgemma
        model = self.model()
        adapter = s.adapter_in_reading and model.adapter is not None
        cap = model.slice_cap
        indices, pick_note = pick_slices(triage, cap)
        requested = len(indices)
        reductions: list[str] = []
        generation = None
        while generation is None:
            messages, images = series_prompt(context, indices, models)
            try:
                generation = model.generate(messages, images, s.max_new_tokens, adapter=adapter)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled here
                if not is_out_of_memory(exc):
                    raise
                release_memory()
                reductions.append(f"out of memory with {len(indices)} slice(s)")
                if len(indices) <= 1:
                    return self._fallback(context, triage, quantification, model, reductions, requested)
                keep = max(1, len(indices) // 2)
                indices = sorted(sorted(indices, key=lambda k: (-triage.scores[k], k))[:keep])
                model.slice_cap = min(model.slice_cap, keep)  # later studies start lower
        raw = generation.text
        result = parse_reading(raw)
        attempts, total_tokens, total_seconds = 1, generation.new_tokens, generation.seconds
        prompt_tokens = generation.prompt_tokens
        raw_texts = [raw]
        if not result.parsed and s.reask:
            again = model.generate(reask_messages(messages, raw, result.error or "invalid"), images,
                                   s.max_new_tokens, adapter=adapter)
            attempts += 1
            total_tokens += again.new_tokens
            total_seconds += again.seconds
            prompt_tokens += again.prompt_tokens
            raw_texts.append(again.text)
            retry = parse_reading(again.text)
            if retry.parsed:
                result = retry
            else:
                result.error = f"{result.error}; after asking again: {retry.error}"

        if result.parsed:
            reading: dict[str, Any] = dict(result.value or {})
            reading["source"] = "medgemma"
        else:
            reading = RulesReading(self.settings).run(context, triage, quantification)
            reading["source"] = "rules-baseline (the MedGemma reply did not parse)"
            context.notes.append("reading: the MedGemma reply was not valid JSON after "
                                 f"{attempts} attempt(s); the rules reading is given instead")
        reduction = None
        if reductions:
            reduction = (f"{'; '.join(reductions)}: read {len(indices)} of {requested} slices")
            context.notes.append(f"reading: {reduction}")
        if pick_note:
            context.notes.append(f"reading: {pick_note}")
        reading.update({
            "slices_considered": list(indices),
            "model": model.describe(),
            "adapter": adapter,
            "raw_text": raw_texts[-1],
            "raw_texts": raw_texts,
            "parsed": result.parsed,
            "repaired": result.repaired,
            "attempts": attempts,
            "parse_error": result.error,
            "slices_sent": [{"index": k, "z_mm": round(z_mm(context, k), 2),
                             "score": triage.scores[k]} for k in indices],
            "slices_requested": requested,
            "slice_cap": cap,
            "slice_reduction": reduction,
            "generation": {"prompt_tokens": prompt_tokens, "new_tokens": total_tokens,
                           "seconds": round(total_seconds, 3),
                           "tokens_per_second": round(total_tokens / total_seconds, 2)
                           if total_seconds > 0 else 0.0},
        })
        return reading

    def _fallback(self, context: StageContext, triage: TriageResult, quantification: Quantification,
                  model: Any, reductions: list[str], requested: int) -> dict[str, Any]:
        """Out of memory even with one slice: the rules reading, and the Findings say why."""
        reading = RulesReading(self.settings).run(context, triage, quantification)
        reduction = f"{'; '.join(reductions)}: MedGemma could not read any slice"
        context.notes.append(f"reading: {reduction}; the rules reading is given instead")
        reading.update({"source": "rules-baseline (MedGemma ran out of memory)", "model": model.describe(),
                        "adapter": False, "raw_text": "", "raw_texts": [], "parsed": False,
                        "repaired": False, "attempts": 0, "parse_error": None, "slices_sent": [],
                        "slices_requested": requested, "slice_cap": model.slice_cap,
                        "slice_reduction": reduction,
                        "generation": {"prompt_tokens": 0, "new_tokens": 0, "seconds": 0.0,
                                       "tokens_per_second": 0.0}})
        return reading
