"""Which weights a model stage used, as a short text that changes when they change.

The outputs name each algorithm with a device UID derived from this (IHE AI
Results: Contributing Equipment per algorithm), so a reader can tell results of
other weights apart: the model id, plus the SHA-256 of a local LoRA adapter or
U-Net checkpoint. A base model is named by its id or directory (hashing
gigabytes of weights per study would cost more than the analysis). Works
without torch: only files are read.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
EMBEDDED = ""  # the embedded backends use no weights


def stage_weights(stage: str, backend: str, settings: Any) -> str:
    """The weights behind one stage's backend ('' for the embedded ones)."""
    models = settings.models
    if backend == "medsiglip":
        return f"model {models.medsiglip.model}"
    if backend == "medgemma":
        gem = models.medgemma
        text = f"model {gem.model}"
        uses_adapter = gem.adapter and (gem.adapter_in_reading if stage == "reading" else gem.adapter_in_report)
        return text + (f"; adapter {gem.adapter} {_fingerprint(gem.adapter, ADAPTER_FILES)}" if uses_adapter else "")
    if backend == "unet":
        return f"checkpoint {models.unet.checkpoint} {_fingerprint(models.unet.checkpoint, ())}"
    return EMBEDDED


def _fingerprint(path_or_id: str, files_in_directory: tuple[str, ...]) -> str:
    """sha256 of a local file (or of the first named file of a local directory); a hub id as is."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        path = next((path / name for name in files_in_directory if (path / name).is_file()), path)
    if not path.is_file():
        return "(not a local file)"
    stat = path.stat()
    return "sha256:" + _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)[:16]


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Cached by size and time, so that each file is read once per process until it changes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
