"""`trauma-node finetune-reading DATASET --out ADAPTER_DIR`: a PEFT LoRA adapter for the reading.

The conversations come from training.reading_data (the reading backend's own prompt; the
reply its JSON, from the labels). transformers' Trainer trains a LoRA adapter on the base
MedGemma with the loss on the reply tokens only (the prompt's labels are -100), with
NEFTune noise, a held-out set of patients for the evaluation loss each epoch, checkpoints
in ADAPTER_DIR/checkpoints (``--resume`` continues from the last one). ADAPTER_DIR then
holds the adapter as PEFT saves it (adapter_config.json, adapter_model.safetensors),
which ``[pipeline.models.medgemma] adapter`` loads as it is, with README.md and
training.json: the research-use statement, the base model, the data it came from, the
settings and the losses, and prompt_profile.toml: the prompt profile the conversations were
built with (pipeline/prompt_profile.py), the node's window and 2.5D settings filled in, which
the reading then uses for this adapter unless its configuration names another.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from training.common import TRAINED_FOR, hold_out, provenance
from training.reading_data import (DIFFERENTIAL, Collator, build_records, encode_record,
                                   training_profile)
from training.resources import (StepClock, check_memory, describe_device, pick_device,
                                training_memory)
from training.settings import FinetuneReadingSettings


class TrainingError(RuntimeError):
    """The run cannot start (no usable series, nothing to resume); the message says why."""


def lora_targets(settings: FinetuneReadingSettings) -> Any:
    names = "|".join(settings.target_modules)
    if settings.language_model_only:  # SigLIP's projections carry the same names
        return rf".*language_model.*\.({names})"
    return list(settings.target_modules)


def precision(settings: FinetuneReadingSettings, device: str) -> str:
    import torch

    if settings.precision != "auto":
        return settings.precision
    return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def load_model(model_id: str, settings: FinetuneReadingSettings, device: str, mode: str) -> tuple[Any, Any]:
    """Processor and the base model with a fresh LoRA adapter, ready to train."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from pipeline.models.loading import (check_available, loading_error, precision_options,
                                         resolve)

    source = resolve(model_id, "finetune_reading.model")
    check_available(source)
    options = (precision_options(mode, device) if mode in ("4bit", "8bit") else
               {"dtype": {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode, torch.float32),
                "device_map": {"": 0} if device == "cuda" else "cpu"})
    try:
        processor = AutoProcessor.from_pretrained(source.path_or_id, **source.options())
        model = AutoModelForImageTextToText.from_pretrained(source.path_or_id, **source.options(), **options)
    except Exception as exc:  # noqa: BLE001 - one clear message for every load failure
        raise loading_error(source, exc) from exc
    checkpointing = settings.gradient_checkpointing and device == "cuda"
    if mode in ("4bit", "8bit"):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha,
                        lora_dropout=settings.lora_dropout, target_modules=lora_targets(settings),
                        task_type="CAUSAL_LM")
    return processor, get_peft_model(model, config)


def finetune_reading(dataset_path: str | Path, out_dir: str | Path, settings: FinetuneReadingSettings,
                     pipeline: Any, resume: bool = False,
                     say: Callable[[str], None] = print) -> dict[str, Any]:
    """Build the conversations, train, save the adapter; returns what training.json holds."""
    import datasets
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback

    from evaluation.dataset import open_dataset
    from pipeline.models.medgemma import slice_cap_for_memory

    out = Path(out_dir)
    checkpoints = out / "checkpoints"
    last = _last_checkpoint(checkpoints)
    if resume and last is None:
        raise TrainingError(f"--resume: no checkpoint in {checkpoints}")
    if not resume and last is not None:
        raise TrainingError(f"{checkpoints} holds checkpoints of an earlier run: --resume to continue "
                            "it, or another --out")
    base = settings.model or pipeline.models.medgemma.model
    if settings.triage:
        pipeline.backends.triage = settings.triage
    if settings.prompt_profile:
        pipeline.models.medgemma.prompt_profile = settings.prompt_profile
    from pipeline.prompt_profile import ADAPTER_FILE, ProfileError, effective, to_toml

    try:
        profile = training_profile(pipeline)
    except ProfileError as exc:
        raise TrainingError(str(exc)) from exc
    device = pick_device(settings.device)
    mode = precision(settings, device)
    say(f"device: {describe_device(device)}; precision {mode}")
    set_seed(settings.seed)

    dataset = open_dataset(dataset_path)
    for problem in dataset.problems:
        say(f"dataset: {problem}")
    cap = slice_cap_for_memory(None, pipeline.models.medgemma)
    values = effective(profile, pipeline.models)
    say(f"building conversations from {sum(len(s.series) for s in dataset.studies)} series of "
        f"{len(dataset.studies)} patients (triage {pipeline.backends.triage}, at most {cap} slices "
        f"each, prompt profile {profile.label}, as the reading sends them)")
    records, skipped = build_records(dataset, pipeline, cap, out / "data", say)
    if not records:
        raise TrainingError("no series could be made into a conversation" +
                            (f": {skipped[0]}" if skipped else ""))
    train_ids, held_ids = hold_out([r["patient_id"] for r in records], settings.held_out_fraction,
                                   settings.min_held_out, settings.seed)
    train = [r for r in records if r["patient_id"] in train_ids]
    held = [r for r in records if r["patient_id"] in held_ids]
    say(f"{len(train)} conversations for training ({len(train_ids)} patients), {len(held)} held out "
        f"({len(held_ids)} patients)" + ("" if held else ": no evaluation loss (one patient only)"))

    processor, model = load_model(base, settings, device, mode)
    trainable, total = model.get_nb_trainable_parameters()
    say(f"base model {base}; LoRA r={settings.lora_r} alpha={settings.lora_alpha} dropout "
        f"{settings.lora_dropout} on {', '.join(settings.target_modules)}: {trainable:,} trainable of "
        f"{total:,} parameters")
    longest = max(len(encode_record(processor, r)["input_ids"]) for r in records[:8])
    text = model.get_base_model().config.get_text_config()
    checkpointing = settings.gradient_checkpointing and device == "cuda"
    check_memory(device, training_memory(model, longest, text.num_hidden_layers, text.hidden_size,
                                         settings.batch_size, checkpointing,
                                         2 if mode != "fp32" else 4), say)
    steps_per_epoch = math.ceil(len(train) / (settings.batch_size * settings.gradient_accumulation_steps))
    total_steps = (settings.max_steps if settings.max_steps > 0
                   else math.ceil(steps_per_epoch * settings.epochs))
    say(f"{total_steps} optimiser steps ({steps_per_epoch} per epoch, {settings.epochs:g} epochs, "
        f"{longest} tokens in the longest conversation)")

    clock = StepClock(total_steps, say)

    class Progress(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.begin()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.end()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            shown = {k: round(v, 4) for k, v in (logs or {}).items() if isinstance(v, float)}
            say(f"step {state.global_step}/{state.max_steps}: {shown}")

    args = TrainingArguments(
        output_dir=str(checkpoints), num_train_epochs=settings.epochs, max_steps=settings.max_steps,
        learning_rate=settings.learning_rate, lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=settings.warmup_ratio, weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm, per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        neftune_noise_alpha=settings.neftune_noise_alpha or None,
        bf16=mode in ("bf16", "4bit", "8bit") and device == "cuda", fp16=mode == "fp16",
        use_cpu=device == "cpu", eval_strategy=("steps" if settings.eval_steps > 0 else "epoch") if held else "no",
        eval_steps=settings.eval_steps or None, save_strategy="steps",
        save_steps=settings.save_steps, save_total_limit=settings.save_total_limit,
        logging_steps=settings.logging_steps, logging_first_step=True, report_to=[],
        remove_unused_columns=False, label_names=["labels"], seed=settings.seed,
        dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(train),
                      eval_dataset=datasets.Dataset.from_list(held) if held else None,
                      data_collator=Collator(processor, torch.bfloat16 if mode != "fp32" else None),
                      callbacks=[Progress()])
    trainer.remove_callback(PrinterCallback)  # Progress says it, once
    result = trainer.train(resume_from_checkpoint=str(last) if resume else None)
    losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    eval_losses = [(e["step"], e["eval_loss"]) for e in trainer.state.log_history if "eval_loss" in e]
    model.save_pretrained(out)
    record = provenance(
        dataset, {"train": _series(train), "held_out": _series(held)}, settings, skipped,
        base_model=base, adapter_for="pipeline.models.medgemma.adapter",
        reading_prompt={"slice_cap": cap, "context_slices": values.context_slices,
                        "window": [values.window_center, values.window_width],
                        "triage": pipeline.backends.triage, "prompt_profile": profile.name,
                        "prompt_profile_version": profile.version, "prompt_profile_file": ADAPTER_FILE},
        device=device, precision=mode, steps=trainer.state.global_step,
        seconds_per_step=clock.per_step, train_loss=losses, eval_loss=eval_losses,
        train_runtime_s=result.metrics.get("train_runtime"))
    (out / ADAPTER_FILE).write_text(to_toml(profile, pipeline.models, comment=(
        f"The prompt this adapter was trained with (trauma-node finetune-reading, profile {profile.label}).\n"
        "The reading uses it for this adapter when [pipeline.models.medgemma] prompt_profile = \"auto\".")))
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "README.md").write_text(_readme(record))
    say(f"adapter written to {out} (set [pipeline.models.medgemma] adapter = \"{out.resolve()}\")")
    return record


def _series(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"patient_id": r["patient_id"], "series_id": r["series_id"]} for r in records]


def _last_checkpoint(folder: Path) -> Path | None:
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


def _readme(record: dict[str, Any]) -> str:
    data = record["dataset"]
    s = record["settings"]
    first = record["train_loss"][0][1] if record["train_loss"] else float("nan")
    final = record["train_loss"][-1][1] if record["train_loss"] else float("nan")
    held = record["eval_loss"][-1][1] if record["eval_loss"] else None
    return f"""# MedGemma reading adapter (PEFT LoRA) -- RESEARCH USE ONLY

{record['research_use']}
{TRAINED_FOR}

- Base model: `{record['base_model']}`; load with `[pipeline.models.medgemma] adapter = "<this folder>"`.
- LoRA r={s['lora_r']}, alpha={s['lora_alpha']}, dropout {s['lora_dropout']} on
  {', '.join(s['target_modules'])} ({'language model only' if s['language_model_only'] else 'all matching modules'});
  {s['epochs']:g} epochs, learning rate {s['learning_rate']:g}, NEFTune alpha {s['neftune_noise_alpha']:g},
  {record['precision']} on {record['device']}; loss on the reply tokens only.
- Prompt: the node's reading prompt (trauma-node {record['trauma_node_version']}), prompt profile
  `{record['reading_prompt']['prompt_profile']}` (in `prompt_profile.toml`, which the reading uses with
  `prompt_profile = "auto"`): at most {record['reading_prompt']['slice_cap']} slices chosen by the
  `{record['reading_prompt']['triage']}` triage, window {record['reading_prompt']['window']}, context_slices
  {record['reading_prompt']['context_slices']}.
- Targets: the reading's JSON derived from the dataset's labels (training/reading_data.py gives the
  mapping); differential_diagnosis is always {json.dumps(DIFFERENTIAL)}.
- Data: `{data['path']}` ({data['layout']} layout): {len(data['train'])} series for training,
  {len(data['held_out'])} held out (patient and series ids in training.json); {len(data['skipped'])} skipped.
- Training loss {first:.4f} at the first logged step, {final:.4f} at the last
  ({record['steps']} steps){'' if held is None else f'; held-out loss {held:.4f}'}.
- Created {record['created']}.
"""
