"""The training commands' settings: one TOML section each, every field also a CLI flag.

A training config file (``--config FILE``) holds ``[finetune_reading]`` and/or
``[train_segmentation]``; a flag (``--learning-rate 1e-4``, ``--target-modules q_proj,v_proj``)
overrides the file. Unknown keys and values of the wrong type are errors naming the key,
as in the node's own config (node.settings_loader).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.settings_loader import ConfigError, build, coerce, read_toml

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class FinetuneReadingSettings:
    """Defaults: the published MedGemma RSNA LoRA recipe (r 16, alpha 32, dropout 0.05 on the
    seven projections, 3 epochs, learning rate 2e-4, NEFTune alpha 5, bf16 where supported);
    the rest are this project's choices."""

    model: str = ""  # base model; empty: pipeline.models.medgemma.model of the node config
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    language_model_only: bool = True  # LoRA on the language model's projections, not SigLIP's
    epochs: float = 3.0
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    neftune_noise_alpha: float = 5.0  # 0: off
    precision: str = "auto"  # auto (bf16 on a GPU that supports it, else fp32) | bf16 | fp16 | fp32 | 4bit
    batch_size: int = 1
    gradient_accumulation_steps: int = 4
    gradient_checkpointing: bool = True  # on CUDA only
    held_out_fraction: float = 0.1  # patients kept out of training, for the evaluation loss
    min_held_out: int = 1
    eval_steps: int = 0  # the held-out loss every so many steps; 0: every epoch
    seed: int = 42
    save_steps: int = 100  # a checkpoint every so many optimiser steps, and at the end
    save_total_limit: int = 3
    logging_steps: int = 10
    max_steps: int = -1  # > 0: stop after so many steps (a trial run)
    device: str = "auto"  # auto | cuda | cpu
    triage: str = ""  # the triage backend choosing the slices; empty: the node config's
    # The prompt profile the conversations are built with (pipeline/prompt_profile.py), written
    # beside the adapter as prompt_profile.toml; empty: the node config's (auto: multi-slice).
    prompt_profile: str = ""


@dataclass
class TrainSegmentationSettings:
    epochs: int = 30
    learning_rate: float = 3e-4
    weight_decay: float = 1e-4
    batch_size: int = 8
    dice_weight: float = 1.0  # loss = dice_weight * soft Dice + ce_weight * cross-entropy
    ce_weight: float = 1.0
    flip_probability: float = 0.5  # left-right and front-back flips, each
    intensity_shift: float = 0.1  # added to the windowed [0, 1] input, uniform +/-
    intensity_scale: float = 0.1  # multiplied, 1 +/- this
    negative_fraction: float = 0.25  # slices with no blood kept, as a share of those with blood
    held_out_fraction: float = 0.2  # series kept out of training, for the validation Dice
    min_held_out: int = 1
    seed: int = 42
    device: str = "auto"  # auto | cuda | cpu
    encoder: str = ""  # empty: pipeline.models.unet.encoder of the node config
    max_steps: int = -1  # > 0: stop after so many steps (a trial run)


SECTIONS = {"finetune_reading": FinetuneReadingSettings, "train_segmentation": TrainSegmentationSettings}


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One --flag per field (strings here, typed by load_settings)."""
    for f in dataclasses.fields(cls):
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f"set_{f.name}", metavar="VALUE",
                            help=f"default {f.default if f.default is not dataclasses.MISSING else f.default_factory()}")


def load_settings(cls: type, section: str, path: str | Path | None,
                  args: argparse.Namespace | None = None) -> Any:
    """The section of the file (if given) with the flags set in args on top."""
    table: dict[str, Any] = {}
    if path:
        document = read_toml(path, "training config")
        unknown = [k for k in document if k not in SECTIONS]
        if unknown:
            raise ConfigError([f"{path}: unknown section {k!r} (known: {', '.join(SECTIONS)})"
                               for k in unknown])
        table = dict(document.get(section, {}))
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(args, f"set_{f.name}", None) if args is not None else None
        if value is not None:
            table[f.name] = coerce(value, hints[f.name], f"--{f.name.replace('_', '-')}", from_env=True)
    return build(cls, table, section)
