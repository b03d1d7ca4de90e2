"""Supervised conversations for the MedGemma reading, built exactly as the reading prompts.

For each series of a labelled dataset: the volume is loaded, the node's triage backend
scores its slices, and the reading backend's own code picks the slices (its slice cap, the
best-scoring within the prompt profile's share of the volume, in anatomical order) and
builds the conversations (pipeline.backends.medgemma_reading.conversations, through the
prompt profile, pipeline/prompt_profile.py: the same layout, texts, window, 2.5D channels
and labels): one per series (an interleaved profile) or one per slice (a one-slice
profile, as the RSNA adapter was trained). The model's reply to learn is the reading's
JSON (pipeline.reading_json), derived from the study's labels by :func:`target_reading`.

Encoding (:func:`encode`) is the processor call the node makes before generating
(pipeline.models.medgemma.prompt_inputs), then the reply and the chat template's end of
turn; the prompt's tokens (images included) get the label -100, so the loss is computed on
the reply alone.

Label mapping (RSNA 2023 targets -> the reading's fields):

- organs_involved: the organs at level low or high (liver, spleen, kidney), and bowel when
  bowel_injury; empty when none.
- severity_estimate: none when no target is injured; severe when an organ is at level high
  or there is active extravasation; moderate when two or more organs are at level low, or
  bowel is injured; mild when one organ is at level low (and nothing else).
- injury_pattern: each injured organ with its level ("high-grade splenic injury"), bowel
  injury, "active contrast extravasation"; "no traumatic injury" when none.
- bleeding_description: active contrast extravasation present or not, and the organs whose
  injury is labelled (the labels say nothing of blood volume, so neither does the target).
- differential_diagnosis: a fixed list (DIFFERENTIAL).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from evaluation.dataset import Dataset, Labels, SeriesEntry

ORGAN_NAMES = {"liver": "liver", "spleen": "spleen", "kidney": "kidney"}
ORGAN_ADJECTIVE = {"liver": "hepatic", "spleen": "splenic", "kidney": "renal"}
DIFFERENTIAL = ["solid-organ injury", "active hemorrhage", "contained vascular injury", "bowel injury"]


def target_reading(labels: Labels) -> dict[str, Any]:
    """The reading the labels imply (the module docstring gives the mapping)."""
    levels = {organ: labels.level(organ) for organ in ("liver", "spleen", "kidney")}
    injured = [o for o, level in levels.items() if level != "healthy"]
    bowel = labels.level("bowel") == "injury"
    blush = labels.level("extravasation") == "injury"
    organs = [ORGAN_NAMES[o] for o in injured] + (["bowel"] if bowel else [])
    if any(level == "high" for level in levels.values()) or blush:
        severity = "severe"
    elif len(injured) >= 2 or bowel:
        severity = "moderate"
    elif injured:
        severity = "mild"
    else:
        severity = "none"
    parts = [f"{levels[o]}-grade {ORGAN_ADJECTIVE[o]} injury" for o in injured]
    parts += ["bowel injury"] if bowel else []
    parts += ["active contrast extravasation"] if blush else []
    pattern = ", ".join(parts) if parts else "no traumatic injury"
    bleeding = ("active contrast extravasation present" if blush else "no active contrast extravasation")
    if injured:
        bleeding += "; " + " and ".join(f"{ORGAN_NAMES[o]} injury" for o in injured)
    return {"injury_pattern": pattern, "organs_involved": organs, "bleeding_description": bleeding,
            "severity_estimate": severity, "differential_diagnosis": list(DIFFERENTIAL)}


def target_text(labels: Labels) -> str:
    return json.dumps(target_reading(labels))


@dataclass
class SeriesPrompt:
    """One series as the reading sees it: the stage context, triage, and what it sends."""

    context: Any  # pipeline.stages.StageContext
    triage: Any  # pipeline.findings.TriageResult
    indices: list[int]
    conversations: list[Any]  # (slices, messages, images) each

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.conversations[0][1]

    @property
    def images(self) -> list[np.ndarray]:
        return self.conversations[0][2]


def series_prompt(entry: SeriesEntry, settings: Any, cap: int, profile: Any = None) -> SeriesPrompt:
    """Load the series, run anatomy and the configured triage, and build the reading's
    conversations for it (the reading backend's functions). settings: PipelineSettings;
    profile: a PromptProfile (None: the one training_profile chooses)."""
    from pipeline import registry
    from pipeline.anatomy import build_anatomy
    from pipeline.backends import medgemma_reading
    from pipeline.stages import StageContext
    from pipeline.volume import load_volume

    profile = profile or training_profile(settings)
    volume = load_volume(entry.files, settings.min_slices, settings.gap_tolerance)
    anatomy = build_anatomy(volume, settings)
    context = StageContext(volume, settings, anatomy, settings.hemodynamic_status, list(anatomy.notes))
    triage = registry.create("triage", settings).run(context)
    context.triage = triage
    indices, _note = medgemma_reading.reading_slices(context, triage, cap, profile)
    return SeriesPrompt(context, triage, indices,
                        medgemma_reading.conversations(context, indices, settings.models, profile))


def training_profile(settings: Any) -> Any:
    """The prompt profile of the node's settings, never an adapter's own (a new one is trained)."""
    from pipeline.prompt_profile import choose

    return choose(settings.models.medgemma, use_adapter=False).profile


def build_records(dataset: Dataset, settings: Any, cap: int, cache: Path,
                  progress: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], list[str]]:
    """One record per conversation (a series, or a slice of it under a one-slice profile): the
    messages (JSON), the target reply, the images saved to cache/<patient>_<series>_<n>.npz.
    Returns the records and the series skipped, with why."""
    from pipeline.volume import VolumeError

    profile = training_profile(settings)
    cache.mkdir(parents=True, exist_ok=True)
    records, skipped = [], []
    entries = [(study, entry) for study in dataset.studies for entry in study.series]
    for number, (study, entry) in enumerate(entries, start=1):
        stem = f"{_safe(entry.patient_id)}_{_safe(entry.series_id)}"
        meta_path = cache / f"{stem}.json"
        if meta_path.is_file():  # built before (a resumed run), with the same profile
            meta = json.loads(meta_path.read_text())
            if meta.get("prompt_profile") == profile.digest and all(
                    Path(r["images"]).is_file() for r in meta["records"]):
                records += meta["records"]
                continue
        try:
            prompt = series_prompt(entry, settings, cap, profile)
        except (VolumeError, ValueError, OSError) as exc:
            skipped.append(f"patient {entry.patient_id} series {entry.series_id}: {exc}")
            progress(f"  skipped {entry.patient_id}/{entry.series_id}: {exc}")
            continue
        built = []
        for n, (slices, messages, images) in enumerate(prompt.conversations):
            images_path = cache / f"{stem}_{n}.npz"
            np.savez_compressed(images_path, images=np.stack(images))
            built.append({"patient_id": entry.patient_id, "series_id": entry.series_id,
                          "messages": json.dumps(messages), "target": target_text(study.labels),
                          "images": str(images_path), "slices": slices})
        meta_path.write_text(json.dumps({"prompt_profile": profile.digest, "records": built}))
        records += built
        progress(f"  {number}/{len(entries)}: patient {entry.patient_id} series {entry.series_id}, "
                 f"{len(prompt.indices)} slices in {len(built)} conversation(s) ({profile.name})")
    return records, skipped


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in name)


def reply_text(processor: Any, messages: Sequence[dict[str, Any]], reply: str) -> str:
    """The reply as the chat template writes the model's turn after the generation prompt
    (the reply and its end-of-turn marker)."""
    prompt = processor.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    full = processor.apply_chat_template(
        list(messages) + [{"role": "assistant", "content": [{"type": "text", "text": reply}]}],
        add_generation_prompt=False, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template does not write the generation prompt as the start of "
                         "the model's turn; cannot separate the prompt from the reply")
    return full[len(prompt):]


def encode(processor: Any, messages: Sequence[dict[str, Any]], images: Sequence[np.ndarray],
           reply: str) -> dict[str, Any]:
    """Token ids, attention mask, pixel values and labels of one conversation; labels -100 on
    the prompt (the node's own encoding of it), the reply's token ids after it."""
    import torch

    from pipeline.models.medgemma import prompt_inputs

    prompt = prompt_inputs(processor, messages, images)
    tokenizer = getattr(processor, "tokenizer", processor)
    answer = tokenizer(reply_text(processor, messages, reply), add_special_tokens=False,
                       return_tensors="pt")["input_ids"][0]
    ids = prompt["input_ids"][0]
    out: dict[str, Any] = {
        "input_ids": torch.cat([ids, answer]),
        "attention_mask": torch.ones(len(ids) + len(answer), dtype=torch.long),
        "labels": torch.cat([torch.full_like(ids, -100), answer]),
    }
    if "token_type_ids" in prompt:
        out["token_type_ids"] = torch.cat([prompt["token_type_ids"][0], torch.zeros_like(answer)])
    if "pixel_values" in prompt:
        out["pixel_values"] = prompt["pixel_values"]
    return out


def encode_record(processor: Any, record: dict[str, Any]) -> dict[str, Any]:
    with np.load(record["images"]) as data:
        images = list(data["images"])
    return encode(processor, json.loads(record["messages"]), images, record["target"])


class Collator:
    """Pads a batch of encoded conversations (right padding; labels -100, mask 0 on padding)."""

    def __init__(self, processor: Any, dtype: Any = None) -> None:
        self.processor = processor
        tokenizer = getattr(processor, "tokenizer", processor)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.dtype = dtype

    def __call__(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        items = [encode_record(self.processor, r) for r in records]
        length = max(len(i["input_ids"]) for i in items)

        def pad(key: str, value: int) -> Any:
            return torch.stack([torch.cat([i[key], torch.full((length - len(i[key]),), value,
                                                              dtype=i[key].dtype)]) for i in items])

        batch = {"input_ids": pad("input_ids", self.pad_id), "attention_mask": pad("attention_mask", 0),
                 "labels": pad("labels", -100)}
        if all("token_type_ids" in i for i in items):
            batch["token_type_ids"] = pad("token_type_ids", 0)
        if any("pixel_values" in i for i in items):
            pixels = torch.cat([i["pixel_values"] for i in items if "pixel_values" in i])
            batch["pixel_values"] = pixels.to(self.dtype) if self.dtype is not None else pixels
        return batch
