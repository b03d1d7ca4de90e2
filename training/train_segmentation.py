"""`trauma-node train-segmentation DATASET --out CHECKPOINT`: the 2.5D U-Net the `unet` backend loads.

The model is the backend's own: segmentation-models-pytorch U-Net with the node config's
encoder, ``2 * context_slices + 1`` input channels built by pipeline.models.imaging.stack_25d
(the soft-tissue window of ``[pipeline.models]``, each slice with its neighbours), one output
channel per ``[pipeline.models.unet] classes`` name. The targets are the dataset's hemorrhage
masks (NIfTI label maps or DICOM SEG, the node's own included: evaluation.masks.load_mask)
mapped onto those classes as the backend maps classes onto labels (hemorrhage: labels 1 and 3,
active_extravasation: label 2). Loss: soft Dice + cross-entropy; augmentation: left-right and
front-back flips, intensity scale and shift; validation Dice on held-out series each epoch.

The checkpoint holds ``state_dict``, ``classes``, ``encoder``, ``in_channels`` (which the
backend checks against its settings), ``context_slices``, ``window``, the research-use
statement and ``training``: the dataset's path and layout, the series of each split, the
settings and the Dice of every epoch. The best epoch by validation Dice is written (the last
one without held-out series).
"""

from __future__ import annotations

import math
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from training.common import TRAINED_FOR, hold_out, provenance
from training.resources import StepClock, check_memory, describe_device, pick_device
from training.settings import TrainSegmentationSettings

# Bytes of activations per input pixel of a ResNet-34 U-Net in fp32, forward and backward
# (a rough figure: about 250 stored values per pixel, twice).
ACTIVATION_BYTES_PER_PIXEL = 2048


class TrainingError(RuntimeError):
    """The run cannot start (no series with a mask); the message says why."""


def class_of_label(classes: list[str]) -> np.ndarray:
    """Lookup table label value (0-255) -> output channel, as the backend maps channels to labels."""
    from pipeline.backends.unet_segmentation import LABEL_OF_CLASS

    lut = np.zeros(256, dtype=np.int64)
    lut[1:] = classes.index("hemorrhage") if "hemorrhage" in classes else 0  # any other label: blood
    for i, name in enumerate(classes):
        if name in LABEL_OF_CLASS:
            lut[LABEL_OF_CLASS[name]] = i
    return lut


@dataclass
class SeriesData:
    patient_id: str
    series_id: str
    hu: np.ndarray  # memory-mapped, (slices, rows, cols)
    target: np.ndarray  # class index per voxel, uint8
    slices: list[int]  # the slices to train or validate on


def series_geometry(volume: Any) -> dict[str, Any]:
    series = volume.geometry_dict()
    series["slices"] = [{"sop_instance_uid": s.sop_instance_uid, "position": list(s.position)}
                        for s in volume.slices]
    return series


def load_series(dataset: Any, pipeline: Any, lut: np.ndarray, negative_fraction: float, seed: int,
                cache: Path, say: Callable[[str], None]) -> tuple[list[SeriesData], list[str]]:
    """Each series with a hemorrhage mask: HU (int16, on disk), the target classes, and the
    slices to use: every slice with blood, and a share of the others."""
    from evaluation.masks import load_mask
    from pipeline.volume import VolumeError, load_volume

    found, skipped = [], []
    rng = random.Random(seed)
    entries = [e for s in dataset.studies for e in s.series]
    without = [e for e in entries if e.hemorrhage_mask is None]
    if without:
        skipped.append(f"{len(without)} series without a hemorrhage mask (masks/<series uid>.nii[.gz] "
                       "or .dcm in a site's folder; the RSNA 2023 layout has none)")
    for entry in (e for e in entries if e.hemorrhage_mask is not None):
        try:
            volume = load_volume(entry.files, pipeline.min_slices, pipeline.gap_tolerance)
            labels = load_mask(entry.hemorrhage_mask, series_geometry(volume))
        except (VolumeError, ValueError, OSError) as exc:
            skipped.append(f"patient {entry.patient_id} series {entry.series_id}: {exc}")
            continue
        name = "".join(c if c.isalnum() else "_" for c in f"{entry.patient_id}_{entry.series_id}")
        np.save(cache / f"{name}.npy", np.clip(np.rint(volume.hu), -32768, 32767).astype(np.int16))
        hu = np.load(cache / f"{name}.npy", mmap_mode="r")
        target = lut[labels].astype(np.uint8)
        positive = [k for k in range(len(target)) if target[k].any()]
        negative = [k for k in range(len(target)) if not target[k].any()]
        keep = rng.sample(negative, min(len(negative), math.ceil(negative_fraction * max(len(positive), 1))))
        found.append(SeriesData(entry.patient_id, entry.series_id, hu, target, sorted(positive + keep)))
        say(f"  patient {entry.patient_id} series {entry.series_id}: {len(positive)} slices with blood, "
            f"{len(keep)} without")
    return found, skipped


def batches(series: list[SeriesData], batch_size: int, rng: random.Random | None) -> list[list[tuple[int, int]]]:
    """(series number, slice) pairs in batches; shuffled when rng is given."""
    pairs = [(i, k) for i, s in enumerate(series) for k in s.slices]
    if rng is not None:
        rng.shuffle(pairs)
    return [pairs[i:i + batch_size] for i in range(0, len(pairs), batch_size)]


def tensors(series: list[SeriesData], batch: list[tuple[int, int]], pipeline: Any) -> tuple[Any, Any]:
    """Inputs exactly as the backend builds them (stack_25d), padded to a multiple of 32
    (the padding's target is ignored), and the target classes."""
    import torch

    from pipeline.models.imaging import stack_25d

    models = pipeline.models
    xs, ys = [], []
    for i, k in batch:
        s = series[i]
        xs.append(stack_25d(s.hu, [k], models.window_center, models.window_width,
                            models.unet.context_slices)[0])
        ys.append(s.target[k].astype(np.int64))
    x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
    pad_r, pad_c = (-x.shape[2]) % 32, (-x.shape[3]) % 32
    if pad_r or pad_c:
        x = torch.nn.functional.pad(x, (0, pad_c, 0, pad_r))
        y = torch.nn.functional.pad(y, (0, pad_c, 0, pad_r), value=-100)
    return x, y


def augment(x: Any, y: Any, settings: TrainSegmentationSettings, generator: Any) -> tuple[Any, Any]:
    """Flips (left-right, front-back) and intensity scale/shift, per slice."""
    import torch

    x, y = x.clone(), y.clone()
    for n in range(x.shape[0]):
        for axis in (2, 1):  # columns (left-right), rows (front-back)
            if torch.rand((), generator=generator) < settings.flip_probability:
                x[n] = x[n].flip(axis)
                y[n] = y[n].flip(axis - 1)
        scale = 1 + (2 * torch.rand((), generator=generator) - 1) * settings.intensity_scale
        shift = (2 * torch.rand((), generator=generator) - 1) * settings.intensity_shift
        x[n] = (x[n] * scale + shift).clamp(0.0, 1.0)
    return x, y


def dice_scores(model: Any, series: list[SeriesData], pipeline: Any, classes: list[str],
                batch_size: int, device: str) -> dict[str, float | None]:
    """Dice per class (over every voxel of the validation slices) and of any blood; None for a
    class absent from both truth and prediction."""
    import torch

    inter = np.zeros(len(classes))
    sums = np.zeros(len(classes))
    fg_inter = fg_sum = 0.0
    model.eval()
    with torch.inference_mode():
        for batch in batches(series, batch_size, None):
            x, y = tensors(series, batch, pipeline)
            pred = model(x.to(device)).argmax(1).cpu()
            valid = y != -100
            for c in range(1, len(classes)):
                p, t = (pred == c) & valid, (y == c) & valid
                inter[c] += float((p & t).sum())
                sums[c] += float(p.sum() + t.sum())
            p, t = (pred > 0) & valid, (y > 0) & valid
            fg_inter += float((p & t).sum())
            fg_sum += float(p.sum() + t.sum())
    model.train()
    scores: dict[str, float | None] = {
        classes[c]: (round(float(2 * inter[c] / sums[c]), 4) if sums[c] else None)
        for c in range(1, len(classes))}
    scores["any_blood"] = round(float(2 * fg_inter / fg_sum), 4) if fg_sum else None
    return scores


def train_segmentation(dataset_path: str | Path, checkpoint: str | Path, settings: TrainSegmentationSettings,
                       pipeline: Any, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and write the checkpoint; returns what its ``training`` entry holds."""
    import segmentation_models_pytorch as smp
    import torch

    from evaluation.dataset import open_dataset

    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    unet = pipeline.models.unet
    encoder = settings.encoder or unet.encoder
    classes = list(unet.classes)
    in_channels = 2 * unet.context_slices + 1
    device = pick_device(settings.device)
    say(f"device: {describe_device(device)}")
    dataset = open_dataset(dataset_path)
    for problem in dataset.problems:
        say(f"dataset: {problem}")
    with tempfile.TemporaryDirectory(prefix="train-segmentation-") as cache:
        data, skipped = load_series(dataset, pipeline, class_of_label(classes), settings.negative_fraction,
                                    settings.seed, Path(cache), say)
        for why in skipped:
            say(f"skipped: {why}")
        if not data:
            raise TrainingError("no series with a hemorrhage mask could be read" +
                                (f": {skipped[-1]}" if skipped else ""))
        train_ids, held_ids = hold_out([s.series_id for s in data], settings.held_out_fraction,
                                       settings.min_held_out, settings.seed)
        train = [s for s in data if s.series_id in train_ids]
        held = [s for s in data if s.series_id in held_ids]
        return _train(dataset, Path(checkpoint), settings, pipeline, train, held, skipped, encoder,
                      classes, in_channels, device, rng, generator, smp, torch, say)


def _train(dataset: Any, checkpoint: Path, settings: TrainSegmentationSettings, pipeline: Any,
           train: list[SeriesData], held: list[SeriesData], skipped: list[str], encoder: str,
           classes: list[str], in_channels: int, device: str, rng: random.Random, generator: Any,
           smp: Any, torch: Any, say: Callable[[str], None]) -> dict[str, Any]:
    say(f"{sum(len(s.slices) for s in train)} slices of {len(train)} series for training, "
        f"{sum(len(s.slices) for s in held)} of {len(held)} held out for the validation Dice")
    try:
        model = smp.Unet(encoder, encoder_weights=None, in_channels=in_channels, classes=len(classes))
    except Exception as exc:  # noqa: BLE001
        raise TrainingError(f"encoder {encoder!r}: {exc}") from exc
    model = model.to(device).train()
    rows, cols = (math.ceil(n / 32) * 32 for n in train[0].hu.shape[1:])
    weights = sum(p.numel() for p in model.parameters()) * 4
    check_memory(device, 1.2 * (4 * weights + settings.batch_size * rows * cols * ACTIVATION_BYTES_PER_PIXEL),
                 say)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    per_epoch = len(batches(train, settings.batch_size, None))
    total = per_epoch * settings.epochs
    if settings.max_steps > 0:
        total = min(total, settings.max_steps)
    epochs = math.ceil(total / per_epoch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(total, 1))
    dice_loss = smp.losses.DiceLoss("multiclass", ignore_index=-100)
    ce_loss = torch.nn.CrossEntropyLoss(ignore_index=-100)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" and torch.cuda.is_bf16_supported()
                else torch.autocast("cpu", enabled=False))
    say(f"U-Net {encoder}, {in_channels} slices in, classes {classes}: {total} steps ({per_epoch} per "
        f"epoch, {epochs} epochs, batch {settings.batch_size})")
    clock = StepClock(total, say)
    history, losses, best, best_state, step = [], [], None, None, 0
    for epoch in range(1, epochs + 1):
        epoch_losses = []
        for batch in batches(train, settings.batch_size, rng):
            if step >= total:
                break
            clock.begin()
            x, y = augment(*tensors(train, batch, pipeline), settings, generator)
            x, y = x.to(device), y.to(device)
            with autocast:
                logits = model(x)
            logits = logits.float()
            loss = settings.dice_weight * dice_loss(logits, y) + settings.ce_weight * ce_loss(logits, y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            step += 1
            clock.end()
            epoch_losses.append(loss.item())
            losses.append((step, round(loss.item(), 5)))
        dice = dice_scores(model, held, pipeline, classes, settings.batch_size, device) if held else {}
        history.append({"epoch": epoch, "loss": round(float(np.mean(epoch_losses)), 5), "val_dice": dice})
        say(f"epoch {epoch}/{epochs}: loss {np.mean(epoch_losses):.4f}"
            + (f", validation Dice {dice}" if held else ""))
        score = dice.get("any_blood") if held else None
        if best is None or not held or (score or 0.0) > (best["val_dice"].get("any_blood") or 0.0):
            best = history[-1]
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    record = provenance(
        dataset, {"train": [{"patient_id": s.patient_id, "series_id": s.series_id} for s in train],
                  "held_out": [{"patient_id": s.patient_id, "series_id": s.series_id} for s in held]},
        settings, skipped, device=device, steps=step, seconds_per_step=clock.per_step,
        epochs=history, best_epoch=best["epoch"] if best else None, train_loss=losses)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    models = pipeline.models
    torch.save({"state_dict": best_state, "classes": classes, "encoder": encoder, "in_channels": in_channels,
                "context_slices": models.unet.context_slices,
                "window": [models.window_center, models.window_width],
                "research_use": record["research_use"], "statement": TRAINED_FOR, "training": record},
               checkpoint)
    say(f"checkpoint written to {checkpoint} (epoch {record['best_epoch']}; set "
        f"[pipeline.models.unet] checkpoint = \"{checkpoint.resolve()}\", encoder = \"{encoder}\")")
    return record
