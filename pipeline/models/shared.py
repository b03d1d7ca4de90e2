"""One load per process: models are built once and shared by every caller.

The worker's stages and the Q&A answerer of the same process get the same
object; each model object has its own lock, so that two generations never run
on one model at once (the callers wait their turn).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Hashable, TypeVar

T = TypeVar("T")

_models: dict[Hashable, Any] = {}
_building: dict[Hashable, threading.Lock] = {}
_registry_lock = threading.Lock()


def shared(key: Hashable, build: Callable[[], T]) -> T:
    """The model for key, built on first use (concurrent first callers wait for one build)."""
    with _registry_lock:
        if key in _models:
            return _models[key]
        lock = _building.setdefault(key, threading.Lock())
    with lock:
        with _registry_lock:
            if key in _models:
                return _models[key]
        model = build()  # a failure leaves nothing cached: the next call tries again
        with _registry_lock:
            _models[key] = model
        return model


def loaded() -> list[Hashable]:
    with _registry_lock:
        return list(_models)


def clear() -> None:
    """Forget every model (tests; a process that wants its memory back)."""
    with _registry_lock:
        _models.clear()
        _building.clear()
