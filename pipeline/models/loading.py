"""Where a model's weights come from, and how they are loaded on this machine.

A model is named by a local directory (the ``save_pretrained`` layout) or a hub
id (``owner/name``). Hub access honours ``HF_TOKEN`` (gated models such as
MedGemma need an account that accepted the licence) and ``HF_HUB_OFFLINE``
(then only the local cache is used). Every failure becomes
:class:`ModelUnavailable`, whose message says what to do.

torch and transformers are imported lazily: the embedded backends, and the node
without the ``models`` extra, never import them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

INSTALL_HINT = ("install the optional model packages (pip install 'trauma-node[models]': torch, "
                "transformers, peft, bitsandbytes, segmentation-models-pytorch), or choose the "
                "embedded backends in [pipeline.backends]")


class ModelUnavailable(RuntimeError):
    """A configured model cannot be used; the message says which and what to do."""


def require(*modules: str, what: str = "the model backends") -> None:
    """Import the packages a model backend needs, or say how to install them."""
    import importlib

    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
    if missing:
        raise ModelUnavailable(f"{what} need {', '.join(missing)}: {INSTALL_HINT}")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


@dataclass(frozen=True)
class Source:
    """A model named in the settings: a local directory or a hub id."""

    setting: str  # the dotted settings key, for messages
    value: str
    local: Path | None  # set for a local directory

    @property
    def hub_id(self) -> str | None:
        return None if self.local else self.value

    @property
    def path_or_id(self) -> str:
        return str(self.local) if self.local else self.value

    def options(self) -> dict[str, Any]:
        """Keyword arguments for from_pretrained."""
        if self.local:
            return {"local_files_only": True}
        return {"token": hub_token(), "local_files_only": hub_offline()}

    def describe(self) -> str:
        return f"{self.setting} = {self.value!r}"


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or os.sep + os.sep in value or value.count("/") > 1


def resolve(value: str, setting: str) -> Source:
    """A local directory when one exists at that path (or the value is clearly a path), else a hub id."""
    value = value.strip()
    path = Path(value).expanduser()
    if path.exists() or _looks_like_path(value):
        return Source(setting, value, path.resolve())
    return Source(setting, value, None)


def _fetch_hint(source: Source) -> str:
    return (f"download it on a machine with hub access (huggingface-cli download {source.value} "
            f"--local-dir DIR) and set {source.setting} = \"DIR\"")


def check_available(source: Source, marker: str = "config.json") -> None:
    """Fail now, with what to do, if the model cannot be had; never downloads weights.

    A local directory must hold ``marker``; a hub id must resolve (its small
    ``marker`` file is fetched, or found in the cache when HF_HUB_OFFLINE is set).
    """
    if source.local:
        if not source.local.is_dir():
            raise ModelUnavailable(f"{source.describe()}: no such directory; put the model there "
                                   f"(the save_pretrained layout) or name a hub id")
        if not (source.local / marker).is_file():
            raise ModelUnavailable(f"{source.describe()}: {source.local} has no {marker}; it must be "
                                   f"a model saved with save_pretrained (or downloaded from the hub)")
        return
    require("huggingface_hub", what=f"{source.setting}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as hub_errors

    try:
        hf_hub_download(source.value, marker, token=hub_token(), local_files_only=hub_offline())
    except hub_errors.GatedRepoError:
        raise ModelUnavailable(
            f"{source.describe()}: the model is gated. Accept its licence on the hub page with your "
            f"account, then set HF_TOKEN to a read token of that account (or {_fetch_hint(source)})"
        ) from None
    except hub_errors.RepositoryNotFoundError:
        raise ModelUnavailable(
            f"{source.describe()}: no such model on the hub, or it is private and HF_TOKEN is not set "
            f"or has no access. Check the id, set HF_TOKEN, or {_fetch_hint(source)}") from None
    except (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled):
        why = ("HF_HUB_OFFLINE is set and the model is not in the local cache" if hub_offline()
               else "the hub cannot be reached and the model is not in the local cache")
        raise ModelUnavailable(f"{source.describe()}: {why}; {_fetch_hint(source)}") from None
    except hub_errors.EntryNotFoundError:
        raise ModelUnavailable(f"{source.describe()}: the hub repository has no {marker}; "
                               f"is it the right model?") from None
    except OSError as exc:  # network errors, permissions on the cache
        raise ModelUnavailable(f"{source.describe()}: cannot fetch from the hub ({exc}); "
                               f"{_fetch_hint(source)}") from None


def loading_error(source: Source, exc: BaseException) -> ModelUnavailable:
    """A load failure as a message that says what to do."""
    text = str(exc)
    if "gated" in text.lower() or "401" in text or "403" in text:
        return ModelUnavailable(f"{source.describe()}: access denied ({text.splitlines()[0]}); accept "
                                f"the model's licence on the hub and set HF_TOKEN, or {_fetch_hint(source)}")
    return ModelUnavailable(f"{source.describe()}: cannot load the model: {type(exc).__name__}: "
                            f"{text.splitlines()[0] if text else ''}")


# --- device and precision -----------------------------------------------------------------

def pick_device(preference: str) -> str:
    """'cuda' or 'cpu' from the setting (auto: CUDA when there is one)."""
    import torch

    if preference == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if preference == "cuda":
        raise ModelUnavailable("pipeline.models.device = \"cuda\" but no CUDA device is visible "
                               "(check the driver and CUDA_VISIBLE_DEVICES, or set device = \"auto\")")
    return "cpu"


def resolve_quantization(setting: str, device: str) -> str:
    """auto: 4-bit NF4 on CUDA, fp32 on the CPU; anything else as set."""
    if setting == "auto":
        return "4bit" if device == "cuda" else "fp32"
    return setting


def precision_options(quantization: str, device: str) -> dict[str, Any]:
    """from_pretrained keyword arguments for a precision: dtype, quantization_config, device_map."""
    import torch

    options: dict[str, Any] = {"device_map": {"": 0} if device == "cuda" else "cpu"}
    if quantization in ("4bit", "8bit"):
        require("bitsandbytes", what="quantization = \"4bit\" / \"8bit\"")
        from transformers import BitsAndBytesConfig

        # The language model is quantised; the vision tower, its projector and the output
        # head stay in bf16 (about 0.4 B parameters: image features keep full precision).
        skip = ["model.vision_tower", "model.multi_modal_projector", "vision_tower",
                "multi_modal_projector", "lm_head"]
        if quantization == "4bit":
            # NF4 weights with bf16 compute, double quantisation of the scales (QLoRA recipe).
            options["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                bnb_4bit_use_double_quant=True, llm_int8_skip_modules=skip)
        else:
            options["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True,
                                                                llm_int8_skip_modules=skip)
        options["dtype"] = torch.bfloat16
    elif quantization == "bf16":
        options["dtype"] = torch.bfloat16
    else:
        options["dtype"] = torch.float32
    return options


def compute_dtype(quantization: str) -> Any:
    import torch

    return torch.float32 if quantization == "fp32" else torch.bfloat16


# --- memory -------------------------------------------------------------------------------

def free_gpu_bytes() -> int | None:
    """Free memory on the current CUDA device, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return int(free)


def is_out_of_memory(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        isinstance(exc, MemoryError) or "out of memory" in str(exc).lower())


def release_memory() -> None:
    """After an out-of-memory error: drop what can be dropped and empty the CUDA cache."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def in_batches(items: Sequence[T], batch_size: int, run: Callable[[Sequence[T]], R], notes: list[str],
               what: str) -> list[R]:
    """run(chunk) over items in batches of batch_size, in order. Out of memory: the CUDA
    cache is emptied and the batch halved (down to one item), and a note says so."""
    results: list[R] = []
    start, size = 0, max(1, batch_size)
    while start < len(items):
        chunk = items[start:start + size]
        try:
            results.append(run(chunk))
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled here
            if not is_out_of_memory(exc) or size == 1:
                raise
            release_memory()
            size = max(1, size // 2)
            continue
        start += len(chunk)
    if size < batch_size:
        notes.append(f"{what}: out of memory with batches of {batch_size}; ran in batches of {size}")
    return results
