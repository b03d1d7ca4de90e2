"""MedGemma reading: the triaged slices as a prompt profile lays them out, JSON out.

The prompt profile (pipeline/prompt_profile.py, chosen in [pipeline.models.medgemma]
prompt_profile, or carried by the adapter) says how. ``interleaved`` (the node's own
``multi-slice``): the slices chosen by triage (at most the model's slice cap, the
best-scoring ones) go to MedGemma in one user turn as interleaved text and image items in
anatomical order (cranial first), each labelled with its slice index and z position.
``one-slice`` (``rsna-adapter-v1``): one request per slice, each reply read on its own,
then combined into one reading (organs as the union, severity as the highest, active
extravasation when any slice says so, with those slices). The profile also sets the
window, the 2.5D channels (neighbours in red and blue), the share of the volume the slices
come from and the generation. A reply must be the JSON of pipeline.reading_json: it is
validated, repaired when that is safe, else asked for once more (when the profile allows);
the raw text and whether it parsed are kept in the reading, with the profile that made the
prompt. If the model runs out of memory, the cache is emptied and the reading retried with
half the slices, down to one (one-slice: that slice is skipped), and the Findings say so;
if no reply parses, the reading falls back to the rules over the segmentation, labelled as
such.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pipeline import prompt_profile
from pipeline.backends.rules_reading import RulesReading
from pipeline.findings import TriageResult
from pipeline.models.imaging import slice_rgb
from pipeline.prompt_profile import Effective, PromptProfile, effective, render, render_instruction
from pipeline.quantification import Quantification
from pipeline.reading_json import READING_KEYS, ParsedReading, parse_reading
from pipeline.settings import ModelSettings, PipelineSettings
from pipeline.stages import StageContext

log = logging.getLogger(__name__)
MULTI_SLICE = prompt_profile.named(prompt_profile.DEFAULT)
SYSTEM = MULTI_SLICE.system
INSTRUCTIONS = render_instruction(MULTI_SLICE)
Conversation = tuple[list[int], list[dict[str, Any]], list[np.ndarray]]  # slices, messages, images


def pick_slices(triage: TriageResult, cap: int,
                allowed: Sequence[int] | None = None) -> tuple[list[int], str | None]:
    """The slices to read, in anatomical order: the chosen ones, the best ``cap`` of them.

    allowed: the slices the profile reads from (its share of the volume); None for all.
    When triage chose none of them, the ``cap`` best-scoring are read anyway (a model may
    see what the threshold missed), and the note says so.
    """
    scores = np.asarray(triage.scores, dtype=float)
    within = set(range(len(scores)) if allowed is None else allowed)
    pool = [k for k in triage.chosen if k in within]
    note = None
    if not pool:
        pool = sorted(within)
        note = ("no slice reached the triage threshold" + ("" if allowed is None else
                " in the prompt profile's share of the volume") + "; the highest-scoring slices were read")
    best = sorted(pool, key=lambda k: (-scores[k], k))[:cap]
    return sorted(best), note


def reading_slices(context: StageContext, triage: TriageResult, cap: int,
                   profile: PromptProfile) -> tuple[list[int], str | None]:
    """pick_slices within the profile's slice range of this volume."""
    return pick_slices(triage, cap, profile.slice_indices(len(context.volume.hu)))


def z_mm(context: StageContext, k: int) -> float:
    """The slice's position along the patient's head-foot axis (LPS z, mm)."""
    return float(context.volume.slices[k].position[2])


def _with_system(profile: PromptProfile, user: list[dict[str, Any]]) -> list[dict[str, Any]]:
    system = [{"role": "system", "content": [{"type": "text", "text": profile.system}]}] if profile.system else []
    return system + [{"role": "user", "content": user}]


def reading_messages(context: StageContext, indices: Sequence[int], context_slices: int,
                     window: tuple[float, float], profile: PromptProfile = MULTI_SLICE
                     ) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """An interleaved profile's messages and images: one text label before each image, cranial first."""
    indices = sorted(indices)
    hu = context.volume.hu
    note = render(profile.context_note, context_slices=context_slices) if context_slices else ""
    content: list[dict[str, Any]] = [{"type": "text", "text": render(
        profile.intro, count=len(indices), window_center=window[0], window_width=window[1],
        context_slices=context_slices, context_note=note)}]
    images = []
    for k in indices:
        content.append({"type": "text", "text": render(profile.slice_label, index=k, z_mm=z_mm(context, k))})
        content.append({"type": "image"})
        images.append(slice_rgb(hu, k, window[0], window[1], context_slices))
    content.append({"type": "text", "text": render_instruction(profile)})
    return _with_system(profile, content), images


def slice_messages(context: StageContext, k: int, profile: PromptProfile,
                   values: Effective) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """A one-slice profile's messages and image for slice k."""
    image = [{"type": "image"}]
    text = [{"type": "text", "text": render_instruction(profile)}]
    content = image + text if profile.image_position == "before" else text + image
    return _with_system(profile, content), [slice_rgb(context.volume.hu, k, values.window_center,
                                                      values.window_width, values.context_slices)]


def conversations(context: StageContext, indices: Sequence[int], models: ModelSettings,
                  profile: PromptProfile) -> list[Conversation]:
    """What the reading sends for these slices under this profile, the node's settings filling
    what the profile leaves out: one conversation (interleaved) or one per slice (one-slice).
    The fine-tuning data (training.reading_data) is built by this too."""
    values = effective(profile, models)
    if profile.layout == "one-slice":
        return [([k], *slice_messages(context, k, profile, values)) for k in sorted(indices)]
    messages, images = reading_messages(context, indices, values.context_slices,
                                        (values.window_center, values.window_width), profile)
    return [(sorted(indices), messages, images)]


def reask_messages(messages: list[dict[str, Any]], reply: str, error: str) -> list[dict[str, Any]]:
    return messages + [
        {"role": "assistant", "content": [{"type": "text", "text": reply}]},
        {"role": "user", "content": [{"type": "text", "text":
            f"That reply was not usable: {error}. Reply again with only the JSON object, with exactly "
            f"the keys {', '.join(READING_KEYS)}."}]},
    ]


@dataclass
class Asked:
    """One request's outcome: the parsed reply and what it took (a re-ask included)."""

    result: ParsedReading
    raw_texts: list[str]
    attempts: int
    new_tokens: int
    seconds: float
    prompt_tokens: int


def ask(model: Any, messages: list[dict[str, Any]], images: Sequence[np.ndarray], values: Effective,
        adapter: bool) -> Asked:
    """Generate, parse, and ask once more when the reply is not usable (values.reask)."""
    first = model.generate(messages, images, values.max_new_tokens, adapter=adapter)
    asked = Asked(parse_reading(first.text), [first.text], 1, first.new_tokens, first.seconds,
                  first.prompt_tokens)
    if not asked.result.parsed and values.reask:
        again = model.generate(reask_messages(messages, first.text, asked.result.error or "invalid"), images,
                               values.max_new_tokens, adapter=adapter)
        asked.attempts += 1
        asked.new_tokens += again.new_tokens
        asked.seconds += again.seconds
        asked.prompt_tokens += again.prompt_tokens
        asked.raw_texts.append(again.text)
        retry = parse_reading(again.text)
        if retry.parsed:
            asked.result = retry
        else:
            asked.result.error = f"{asked.result.error}; after asking again: {retry.error}"
    return asked


def ask_within_memory(model: Any, messages: list[dict[str, Any]], images: Sequence[np.ndarray],
                      values: Effective, adapter: bool) -> Asked | None:
    """ask; None when the model ran out of memory (the cache emptied), other errors raised."""
    from pipeline.models.loading import is_out_of_memory, release_memory

    try:
        return ask(model, messages, images, values, adapter)
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled here
        if not is_out_of_memory(exc):
            raise
        release_memory()
        return None


_announced: set[tuple[str, str]] = set()


def announce(chosen: prompt_profile.Chosen) -> None:
    """Log the profile a reading uses, once per process and profile."""
    key = (chosen.profile.label, chosen.reason())
    if key not in _announced:
        _announced.add(key)
        level = logging.WARNING if "overriding" in key[1] else logging.INFO
        log.log(level, "reading prompt profile %s: %s", chosen.profile.label, chosen.reason())


class MedGemmaReading:
    name = "medgemma"
    version = "1.1"
    description = "MedGemma 1.5 reading (prompt profile: slices interleaved or one per request, JSON validated)"

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings

    def model(self) -> Any:
        from pipeline.models.medgemma import medgemma

        return medgemma(self.settings.models)

    def run(self, context: StageContext, triage: TriageResult,
            quantification: Quantification) -> dict[str, Any]:
        models = self.settings.models
        model = self.model()
        adapter = models.medgemma.adapter_in_reading and model.adapter is not None
        chosen = prompt_profile.choose(models.medgemma)
        announce(chosen)
        if "overriding" in chosen.reason():
            context.notes.append(f"reading: prompt profile {chosen.profile.label} {chosen.reason()}")
        profile = chosen.profile
        values = effective(profile, models)
        cap = model.slice_cap
        indices, pick_note = reading_slices(context, triage, cap, profile)
        if pick_note:
            context.notes.append(f"reading: {pick_note}")
        if profile.layout == "one-slice":
            reading = self._per_slice(context, triage, quantification, model, adapter, profile, values,
                                      indices)
        else:
            reading = self._interleaved(context, triage, quantification, model, adapter, profile, values,
                                        indices)
        reading["prompt_profile"] = chosen.record()
        reading["slice_cap"] = cap
        return reading

    def _interleaved(self, context: StageContext, triage: TriageResult, quantification: Quantification,
                     model: Any, adapter: bool, profile: PromptProfile, values: Effective,
                     indices: list[int]) -> dict[str, Any]:
        requested = len(indices)
        reductions: list[str] = []
        asked = None
        while asked is None:
            (_, messages, images), = conversations(context, indices, self.settings.models, profile)
            asked = ask_within_memory(model, messages, images, values, adapter)
            if asked is None:
                reductions.append(f"out of memory with {len(indices)} slice(s)")
                if len(indices) <= 1:
                    return self._fallback(context, triage, quantification, model, reductions, requested,
                                          "MedGemma ran out of memory", "could not read any slice")
                keep = max(1, len(indices) // 2)
                indices = sorted(sorted(indices, key=lambda k: (-triage.scores[k], k))[:keep])
                model.slice_cap = min(model.slice_cap, keep)  # later studies start lower
        result = asked.result
        if result.parsed:
            reading: dict[str, Any] = dict(result.value or {})
            reading["source"] = "medgemma"
        else:
            reading = self._rules(context, triage, quantification, "the MedGemma reply did not parse")
            context.notes.append("reading: the MedGemma reply was not valid JSON after "
                                 f"{asked.attempts} attempt(s); the rules reading is given instead")
        reading.update(_record(context, triage, model, adapter, indices, requested, reductions, [asked]))
        reading.update({"parsed": result.parsed, "repaired": result.repaired, "parse_error": result.error})
        return reading

    def _per_slice(self, context: StageContext, triage: TriageResult, quantification: Quantification,
                   model: Any, adapter: bool, profile: PromptProfile, values: Effective,
                   indices: list[int]) -> dict[str, Any]:
        """One request per slice; the valid replies combined as the profile says."""
        reductions: list[str] = []
        done: list[Asked] = []
        per_slice: list[dict[str, Any]] = []
        replies: list[tuple[int, dict[str, Any] | None]] = []
        read: list[int] = []
        for (k,), messages, images in conversations(context, indices, self.settings.models, profile):
            asked = ask_within_memory(model, messages, images, values, adapter)
            if asked is None:
                reductions.append(f"out of memory on slice {k}")
                continue
            done.append(asked)
            read.append(k)
            result = asked.result
            replies.append((k, result.value if result.parsed else None))
            per_slice.append({"index": k, "z_mm": round(z_mm(context, k), 2), "parsed": result.parsed,
                              "repaired": result.repaired, "attempts": asked.attempts,
                              "parse_error": result.error, "raw_texts": asked.raw_texts,
                              "reading": result.value if result.parsed else None})
        if not done:
            return self._fallback(context, triage, quantification, model, reductions, len(indices),
                                  "MedGemma ran out of memory", "could not read any slice")
        valid = [k for k, reply in replies if reply is not None]
        if valid:
            reading = prompt_profile.combine(replies)
            reading["source"] = "medgemma"
            context.notes += [f"reading: {d}" for d in reading["slice_disagreements"]]
        else:
            reading = self._rules(context, triage, quantification, "no per-slice MedGemma reply parsed")
            context.notes.append(f"reading: no MedGemma reply of {len(read)} slice(s) was valid JSON; "
                                 "the rules reading is given instead")
        invalid = [p for p in per_slice if not p["parsed"]]
        if valid and invalid:
            context.notes.append(f"reading: the replies of slice(s) {', '.join(str(p['index']) for p in invalid)} "
                                 "were not valid JSON and were left out")
        reading.update(_record(context, triage, model, adapter, read, len(indices), reductions, done))
        reading.update({"parsed": bool(valid), "repaired": any(p["repaired"] for p in per_slice),
                        "parse_error": "; ".join(f"slice {p['index']}: {p['parse_error']}" for p in invalid) or None,
                        "slices_read_valid": valid, "per_slice": per_slice})
        return reading

    def _rules(self, context: StageContext, triage: TriageResult, quantification: Quantification,
               why: str) -> dict[str, Any]:
        reading = RulesReading(self.settings).run(context, triage, quantification)
        reading["source"] = f"rules-baseline ({why})"
        return reading

    def _fallback(self, context: StageContext, triage: TriageResult, quantification: Quantification,
                  model: Any, reductions: list[str], requested: int, why: str, what: str) -> dict[str, Any]:
        """Out of memory even with one slice: the rules reading, and the Findings say why."""
        reading = self._rules(context, triage, quantification, why)
        reduction = f"{'; '.join(reductions)}: MedGemma {what}"
        context.notes.append(f"reading: {reduction}; the rules reading is given instead")
        considered = reading.get("slices_considered", [])
        reading.update(_record(context, triage, model, False, [], requested, [], []))
        reading.update({"slices_considered": considered, "parsed": False, "repaired": False, "parse_error": None, "slice_reduction": reduction})
        return reading


def _record(context: StageContext, triage: TriageResult, model: Any, adapter: bool, indices: list[int],
            requested: int, reductions: list[str], done: list[Asked]) -> dict[str, Any]:
    """What every MedGemma reading records: the slices, the model, the replies, the generation."""
    raw_texts = [text for asked in done for text in asked.raw_texts]
    tokens = sum(a.new_tokens for a in done)
    seconds = sum(a.seconds for a in done)
    reduction = f"{'; '.join(reductions)}: read {len(indices)} of {requested} slices" if reductions else None
    if reduction:
        context.notes.append(f"reading: {reduction}")
    return {
        "slices_considered": list(indices),
        "model": model.describe(),
        "adapter": adapter,
        "raw_text": raw_texts[-1] if raw_texts else "",
        "raw_texts": raw_texts,
        "attempts": sum(a.attempts for a in done),
        "slices_sent": [{"index": k, "z_mm": round(z_mm(context, k), 2), "score": triage.scores[k]}
                        for k in indices],
        "slices_requested": requested,
        "slice_reduction": reduction,
        "generation": {"prompt_tokens": sum(a.prompt_tokens for a in done), "new_tokens": tokens,
                       "seconds": round(seconds, 3),
                       "tokens_per_second": round(tokens / seconds, 2) if seconds > 0 else 0.0},
    }
