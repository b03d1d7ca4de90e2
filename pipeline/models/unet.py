"""The U-Net (segmentation-models-pytorch, ResNet34 encoder), weights from a checkpoint.

It refuses to run without trained weights: no checkpoint, a checkpoint that
does not cover every layer (e.g. an encoder alone with the decoder left at its
random start, as the public hackathon app did and then reported its volumes),
or one made for other classes or inputs. ``allow_random_weights`` is honoured
only inside the test suite.

Checkpoint layout: a state dict, or a dict with ``state_dict`` (or
``model_state_dict``) and optionally ``classes``, ``encoder``,
``in_channels`` and ``window`` ([centre, width] of pipeline.models), which must
then match the settings (``trauma-node train-segmentation`` writes them all, with
the research-use statement and the training data).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.models.loading import ModelUnavailable, pick_device, require
from pipeline.models.shared import shared
from pipeline.settings import ModelSettings


def running_tests() -> bool:
    return "PYTEST_CURRENT_TEST" in os.environ


def _state_dict(raw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    meta: dict[str, Any] = {}
    if isinstance(raw, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(raw.get(key), dict):
                meta = {k: v for k, v in raw.items() if k != key}
                raw = raw[key]
                break
    if not isinstance(raw, dict):
        raise ValueError("not a state dict")
    # Checkpoints saved from a wrapper (Lightning, DataParallel) prefix every key.
    for prefix in ("model.", "module.", "net."):
        if raw and all(k.startswith(prefix) for k in raw):
            raw = {k[len(prefix):]: v for k, v in raw.items()}
    return raw, meta


class Unet:
    version = "1.0"

    def __init__(self, settings: ModelSettings) -> None:
        require("torch", "segmentation_models_pytorch", what="the U-Net segmentation backend")
        import segmentation_models_pytorch as smp
        import torch

        s = settings.unet
        self.settings = s
        self.in_channels = 2 * s.context_slices + 1
        self.classes = list(s.classes)
        self.device = pick_device(settings.device)
        key = "pipeline.models.unet.checkpoint"
        self.random_weights = not s.checkpoint.strip()
        if self.random_weights and not (s.allow_random_weights and running_tests()):
            raise ModelUnavailable(
                f"{key} is not set: the U-Net backend refuses to run with random weights (its "
                f"volumes would mean nothing). Give a checkpoint trained for the classes "
                f"{self.classes} with {self.in_channels} input slices, or set "
                f"pipeline.backends.segmentation = \"hu-baseline\"")
        try:
            model = smp.Unet(s.encoder, encoder_weights=None, in_channels=self.in_channels,
                             classes=len(self.classes))
        except Exception as exc:  # noqa: BLE001
            raise ModelUnavailable(f"pipeline.models.unet.encoder = {s.encoder!r}: {exc}") from exc
        self.checkpoint = None
        if not self.random_weights:
            path = Path(s.checkpoint).expanduser()
            if not path.is_file():
                raise ModelUnavailable(f"{key} = {s.checkpoint!r}: no such file; copy the trained "
                                       f"U-Net checkpoint there")
            try:
                state, meta = _state_dict(torch.load(path, map_location="cpu", weights_only=True))
            except Exception as exc:  # noqa: BLE001
                raise ModelUnavailable(f"{key} = {s.checkpoint!r}: not a readable torch checkpoint "
                                       f"({type(exc).__name__}: {exc})") from exc
            window = [float(settings.window_center), float(settings.window_width)]
            if "window" in meta:  # written by trauma-node train-segmentation
                meta["window"] = [float(v) for v in meta["window"]]
            for field, expected in (("classes", self.classes), ("encoder", s.encoder),
                                    ("in_channels", self.in_channels), ("window", window)):
                if field in meta and meta[field] != expected:
                    raise ModelUnavailable(f"{key}: the checkpoint was trained with {field} = "
                                           f"{meta[field]!r}, the settings give {expected!r}")
            result = model.load_state_dict(state, strict=False)
            if result.missing_keys:
                parts = sorted({k.split(".")[0] for k in result.missing_keys})
                raise ModelUnavailable(
                    f"{key}: the checkpoint has no weights for {len(result.missing_keys)} tensors "
                    f"(in {', '.join(parts)}, e.g. {result.missing_keys[0]}); the U-Net refuses to run "
                    f"with untrained layers")
            if result.unexpected_keys:
                raise ModelUnavailable(f"{key}: the checkpoint has tensors this U-Net does not "
                                       f"({result.unexpected_keys[0]}, ...); wrong encoder or classes?")
            self.checkpoint = str(path)
        self.model = model.to(self.device).eval()
        if self.device == "cuda":
            self.model = self.model.half()
        self.lock = threading.Lock()
        self._torch = torch

    def describe(self) -> str:
        weights = "RANDOM WEIGHTS (tests only)" if self.random_weights else Path(self.checkpoint or "").name
        return f"smp U-Net {self.settings.encoder}, {self.in_channels} slices in, {weights} ({self.device})"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class index per pixel, (n, rows, cols) uint8, for float32 input (n, channels, rows, cols)."""
        torch = self._torch
        n, _c, rows, cols = batch.shape
        pad_r, pad_c = (-rows) % 32, (-cols) % 32  # the encoder halves the size five times
        x = torch.from_numpy(batch)
        if pad_r or pad_c:
            x = torch.nn.functional.pad(x, (0, pad_c, 0, pad_r))
        x = x.to(self.device, next(self.model.parameters()).dtype)
        with self.lock, torch.inference_mode():
            logits = self.model(x)
        return logits[:, :, :rows, :cols].argmax(dim=1).to(torch.uint8).cpu().numpy()


def unet(settings: ModelSettings) -> Unet:
    s = settings.unet
    key = ("unet", s.checkpoint, s.encoder, tuple(s.classes), s.context_slices, settings.device,
           s.allow_random_weights)
    return shared(key, lambda: Unet(settings))
