"""MedSigLIP (SigLIP image and text towers), loaded once per process and shared.

``image_text_logits`` gives SigLIP's pairwise logits (image embedding . text
embedding * exp(logit_scale) + logit_bias), which the model was trained to put
through a sigmoid per pair; the triage backend turns them into a calibrated
score per slice.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np

from pipeline.models.loading import (check_available, loading_error, pick_device, require,
                                     resolve)
from pipeline.models.shared import shared
from pipeline.settings import ModelSettings


def _embedding(output: Any) -> Any:
    """get_*_features returns a tensor in some transformers versions, an output in others."""
    if hasattr(output, "pooler_output"):
        return output.pooler_output
    return output


class MedSiglip:
    version = "1.0"

    def __init__(self, settings: ModelSettings) -> None:
        require("torch", "transformers", what="the MedSigLIP triage backend")
        import torch
        from transformers import AutoModel, AutoProcessor

        self.source = resolve(settings.medsiglip.model, "pipeline.models.medsiglip.model")
        check_available(self.source)
        self.device = pick_device(settings.device)
        # About 0.9 B parameters: half precision on CUDA, fp32 on the CPU.
        self.dtype = torch.float16 if self.device == "cuda" else torch.float32
        try:
            self.processor = AutoProcessor.from_pretrained(self.source.path_or_id, **self.source.options())
            self.model = AutoModel.from_pretrained(self.source.path_or_id, **self.source.options(),
                                                   dtype=self.dtype).to(self.device).eval()
        except Exception as exc:  # noqa: BLE001
            raise loading_error(self.source, exc) from exc
        self.lock = threading.Lock()
        self._texts: dict[tuple[str, ...], Any] = {}
        self._torch = torch

    def describe(self) -> str:
        return f"{self.source.value} ({str(self.dtype).removeprefix('torch.')}, {self.device})"

    def _text_embeddings(self, texts: Sequence[str]) -> Any:
        key = tuple(texts)
        if key not in self._texts:
            torch = self._torch
            batch = self.processor(text=list(texts), padding="max_length", truncation=True,
                                   return_tensors="pt").to(self.device)
            with torch.inference_mode():
                emb = _embedding(self.model.get_text_features(**batch)).float()
            self._texts[key] = emb / emb.norm(dim=-1, keepdim=True)
        return self._texts[key]

    def image_text_logits(self, images: Sequence[np.ndarray], texts: Sequence[str],
                          batch_size: int = 32) -> np.ndarray:
        """(images, texts) float32 logits; images are RGB uint8 arrays, scored in batches."""
        torch = self._torch
        with self.lock:
            text = self._text_embeddings(texts)
            scale = self.model.logit_scale.detach().float().exp()
            bias = self.model.logit_bias.detach().float()
            rows = []
            for start in range(0, len(images), batch_size):
                chunk = list(images[start:start + batch_size])
                pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"]
                pixels = pixels.to(self.device, self.dtype)
                with torch.inference_mode():
                    emb = _embedding(self.model.get_image_features(pixel_values=pixels)).float()
                emb = emb / emb.norm(dim=-1, keepdim=True)
                rows.append((emb @ text.T * scale + bias).cpu().numpy())
        return np.concatenate(rows, axis=0).astype(np.float32) if rows else np.zeros((0, len(texts)),
                                                                                     np.float32)


def medsiglip(settings: ModelSettings) -> MedSiglip:
    return shared(("medsiglip", settings.medsiglip.model, settings.device), lambda: MedSiglip(settings))
