"""The model backends' models: MedSigLIP, MedGemma 1.5 (+ LoRA adapter), the U-Net.

Each is loaded once per process (``medsiglip(s)``, ``medgemma(s)``, ``unet(s)``
with ``s = settings.models``) and shared by every caller, with a lock per
model. ``preflight(settings)`` checks, at start-up, that every model the
configured backends need can be had, and raises :class:`ModelUnavailable`
with what to do otherwise; ``preflight(settings, load=True)`` also loads them
into this process (a worker's warm-up).

torch and transformers are imported only when a model backend is configured.
"""

from __future__ import annotations

from typing import Any

from pipeline.models.loading import ModelUnavailable, check_available, require, resolve

# Backend names (pipeline.backends) that need each model.
MEDSIGLIP_BACKENDS = {"triage": "medsiglip"}
MEDGEMMA_BACKENDS = {"reading": "medgemma", "report": "medgemma", "answering": "medgemma"}
UNET_BACKENDS = {"segmentation": "unet"}


def _uses(settings: Any, table: dict[str, str]) -> bool:
    backends = settings.backends
    return any(getattr(backends, stage, None) == name for stage, name in table.items())


def needed(settings: Any) -> list[str]:
    """Which models the configured backends use: medsiglip, medgemma, unet."""
    # MedGemma last: its slice cap is measured from the GPU memory left by the others.
    return [name for name, table in (("medsiglip", MEDSIGLIP_BACKENDS), ("unet", UNET_BACKENDS),
                                     ("medgemma", MEDGEMMA_BACKENDS)) if _uses(settings, table)]


def preflight(settings: Any, load: bool = False) -> list[str]:
    """Check that every model the configured backends need can be used; fail now otherwise.

    Without ``load``: the packages import, a local model directory holds a
    saved model, a hub id resolves (a small file from the hub, or the cache
    with HF_HUB_OFFLINE; HF_TOKEN used for gated models), the adapter and the
    U-Net checkpoint are there. Nothing large is downloaded. With ``load``:
    the models are loaded into this process (once) as the stages will use
    them. Returns one line per model checked; raises ModelUnavailable
    (a RuntimeError) whose message says what to do.
    """
    models = settings.models
    lines: list[str] = []
    for name in needed(settings):
        if name == "unet":
            require("torch", "segmentation_models_pytorch", what="pipeline.backends.segmentation = \"unet\"")
            from pipeline.models.unet import unet

            if load:
                lines.append(f"unet: {unet(models).describe()}")
            else:
                _check_unet(models)
                lines.append(f"unet: checkpoint {models.unet.checkpoint}")
            continue
        require("torch", "transformers", what=f"the {name} backends")
        if name == "medsiglip":
            from pipeline.models.medsiglip import medsiglip

            source = resolve(models.medsiglip.model, "pipeline.models.medsiglip.model")
            check_available(source)
            lines.append(f"medsiglip: {medsiglip(models).describe() if load else source.value}")
        else:
            from pipeline.models.medgemma import medgemma

            source = resolve(models.medgemma.model, "pipeline.models.medgemma.model")
            check_available(source)
            if models.medgemma.adapter.strip():
                require("peft", what="pipeline.models.medgemma.adapter")
                check_available(resolve(models.medgemma.adapter, "pipeline.models.medgemma.adapter"),
                                marker="adapter_config.json")
            if load:
                model = medgemma(models)
                lines.append(f"medgemma: {model.describe()}, slice cap {model.slice_cap}")
            else:
                lines.append(f"medgemma: {source.value}"
                             + (f" + {models.medgemma.adapter}" if models.medgemma.adapter else ""))
    return lines


def _check_unet(models: Any) -> None:
    """The checkpoint rule without loading it (the load checks the tensors)."""
    from pathlib import Path

    from pipeline.models.unet import running_tests

    s = models.unet
    if not s.checkpoint.strip():
        if s.allow_random_weights and running_tests():
            return
        raise ModelUnavailable(
            "pipeline.models.unet.checkpoint is not set: the U-Net backend refuses to run with random "
            "weights. Give a trained checkpoint or set pipeline.backends.segmentation = \"hu-baseline\"")
    if not Path(s.checkpoint).expanduser().is_file():
        raise ModelUnavailable(f"pipeline.models.unet.checkpoint = {s.checkpoint!r}: no such file; "
                               f"copy the trained U-Net checkpoint there")


__all__ = ["ModelUnavailable", "needed", "preflight"]
