"""The training commands of `trauma-node`: finetune-reading and train-segmentation."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from training.settings import (FinetuneReadingSettings, TrainSegmentationSettings, add_flags,
                               load_settings)


def _say(text: str) -> None:
    print(text, flush=True)


def _node_pipeline(args: argparse.Namespace) -> Any:
    from node.config import load_settings as load_node_settings

    return load_node_settings(args.node_config).pipeline


def _run(name: str, work: Any) -> int:
    from evaluation.dataset import DatasetError
    from pipeline.models import ModelUnavailable
    from pipeline.findings import RESEARCH_USE

    _say(f"{name}: {RESEARCH_USE}")
    try:
        work()
    except (DatasetError, ModelUnavailable, RuntimeError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_finetune_reading(args: argparse.Namespace) -> int:
    from training.finetune_reading import finetune_reading

    settings = load_settings(FinetuneReadingSettings, "finetune_reading", args.config, args)
    pipeline = _node_pipeline(args)
    return _run("finetune-reading", lambda: finetune_reading(args.dataset, args.out, settings, pipeline,
                                                             resume=args.resume, say=_say))


def cmd_train_segmentation(args: argparse.Namespace) -> int:
    from training.train_segmentation import train_segmentation

    settings = load_settings(TrainSegmentationSettings, "train_segmentation", args.config, args)
    pipeline = _node_pipeline(args)
    return _run("train-segmentation", lambda: train_segmentation(args.dataset, args.out, settings,
                                                                 pipeline, say=_say))


def add_commands(sub: Any) -> None:
    """Register the training commands on the CLI's subparsers."""
    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("dataset", help="a labelled dataset: the RSNA 2023 layout (train.csv) or a "
                                        "site's folder (labels.csv)")
        sp.add_argument("--config", help="training settings (TOML: [finetune_reading], "
                                         "[train_segmentation]); flags override it")
        sp.add_argument("--node-config", help="the node's config, for the model settings the result "
                        "must match (default: $TRAUMA_NODE_CONFIG, then config/node.toml)")

    reading = sub.add_parser("finetune-reading", help="train a LoRA adapter for the MedGemma reading "
                                                      "on a labelled dataset")
    common(reading)
    reading.add_argument("--out", required=True, help="adapter folder ([pipeline.models.medgemma] adapter)")
    reading.add_argument("--resume", action="store_true", help="continue from the last checkpoint in "
                                                                "OUT/checkpoints")
    add_flags(reading, FinetuneReadingSettings)
    reading.set_defaults(func=cmd_finetune_reading)

    seg = sub.add_parser("train-segmentation", help="train the 2.5D U-Net of the unet backend on "
                                                    "hemorrhage masks")
    common(seg)
    seg.add_argument("--out", required=True, help="checkpoint file ([pipeline.models.unet] checkpoint)")
    add_flags(seg, TrainSegmentationSettings)
    seg.set_defaults(func=cmd_train_segmentation)
