"""What a training run needs and how fast it goes: the device, a memory estimate, time per step.

Both training commands say, before they start, which device they use and about how much
memory they need, and after the first steps how long a step takes and so the whole run.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

GIB = 2**30


def pick_device(preference: str) -> str:
    from pipeline.models.loading import pick_device as pipeline_pick

    return pipeline_pick(preference)


def describe_device(device: str) -> str:
    import torch

    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        return (f"CUDA {torch.cuda.get_device_name()} ({free / GIB:.1f} of {total / GIB:.1f} GiB free)")
    return f"CPU ({os.cpu_count()} cores, torch {torch.get_num_threads()} threads): slow, for trials and small sets"


def check_memory(device: str, need_bytes: float, say: Callable[[str], None]) -> None:
    """Say the estimate; on CUDA compare it with the free memory."""
    text = f"memory estimate: about {need_bytes / GIB:.1f} GiB"
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        if need_bytes > free:
            text += (f" -- MORE than the {free / GIB:.1f} GiB free: expect out-of-memory; lower the "
                     f"batch size, or (reading) use precision = \"4bit\" and gradient checkpointing")
        else:
            text += f" ({free / GIB:.1f} GiB free)"
    else:
        text += " of RAM"
    say(text)


def parameter_bytes(model: Any) -> tuple[int, int, int]:
    """(bytes of all weights, trainable parameters, bytes per trainable parameter)."""
    total, trainable, elt = 0, 0, 4
    for p in model.parameters():
        total += p.numel() * p.element_size()
        if p.requires_grad:
            trainable += p.numel()
            elt = p.element_size()
    return total, trainable, elt


def training_memory(model: Any, tokens: int, layers: int, hidden: int, batch: int,
                    checkpointing: bool, activation_bytes: int) -> float:
    """Weights + trainable parameters' gradients and Adam states + activations (about 34 values
    per token, layer and hidden unit without gradient checkpointing, 2 with it), plus 20%."""
    weights, trainable, elt = parameter_bytes(model)
    optimiser = trainable * (elt + 8)  # gradient in the parameter's dtype, two fp32 Adam moments
    per_token = (2 if checkpointing else 34) * layers * hidden * activation_bytes
    return 1.2 * (weights + optimiser + batch * tokens * per_token)


class StepClock:
    """Times the first steps and says what the whole run will take."""

    def __init__(self, total_steps: int, say: Callable[[str], None], measure: int = 3) -> None:
        self.total, self.say, self.measure = total_steps, say, measure
        self.done, self.started, self.seconds = 0, None, 0.0

    def begin(self) -> None:
        self.started = time.perf_counter()

    def end(self) -> None:
        if self.started is None:
            return
        self.done += 1
        if self.done > 1:  # the first step pays for warm-up (allocation, compilation)
            self.seconds += time.perf_counter() - self.started
        self.started = None
        if self.done == self.measure + 1:
            per = self.seconds / self.measure
            left = max(self.total - self.done, 0) * per
            self.say(f"time per step: {per:.2f} s (measured on steps 2-{self.done}); about "
                     f"{_clock(left)} for the {max(self.total - self.done, 0)} steps left")

    @property
    def per_step(self) -> float | None:
        return self.seconds / (self.done - 1) if self.done > 1 else None


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
