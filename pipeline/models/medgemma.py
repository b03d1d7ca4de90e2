"""MedGemma 1.5 (Gemma 3 image-text-to-text), loaded once per process and shared.

The reading stage, the report stage and the Q&A answerer of one process use the
same :class:`MedGemma` object (``medgemma(settings)``); its lock lets one
generation run at a time, the others wait their turn. An optional PEFT LoRA
adapter is loaded on top and can be switched off per call (``adapter=False``).
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from pipeline.models.loading import (ModelUnavailable, Source, check_available, compute_dtype,
                                     free_gpu_bytes, loading_error, pick_device, precision_options,
                                     require, resolve, resolve_quantization)
from pipeline.models.shared import shared
from pipeline.settings import MedGemmaSettings, ModelSettings

GIB = 2**30
Message = dict[str, Any]


def slice_cap_for_memory(free_bytes: int | None, settings: MedGemmaSettings) -> int:
    """How many slices one reading may send, from the GPU memory free after loading.

    ``slice_cap`` > 0 fixes it; on the CPU (free_bytes None) it is ``slice_cap_max``;
    else (free - reserve_gib) / gib_per_slice, kept within [slice_cap_min, slice_cap_max].
    """
    if settings.slice_cap > 0:
        return settings.slice_cap
    if free_bytes is None:
        return settings.slice_cap_max
    fits = int((free_bytes / GIB - settings.reserve_gib) // settings.gib_per_slice)
    return max(settings.slice_cap_min, min(settings.slice_cap_max, fits))


def prompt_inputs(processor: Any, messages: Sequence[Message], images: Sequence[np.ndarray] = ()) -> Any:
    """Chat template (with the generation prompt) + processor, on the CPU: what the model reads
    before it replies. The fine-tuning data (training.reading_data) is encoded by this too."""
    prompt = processor.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    if images:
        return processor(text=prompt, images=[list(images)], return_tensors="pt")
    return processor(text=prompt, return_tensors="pt")


@dataclass
class Generation:
    text: str
    new_tokens: int
    seconds: float
    prompt_tokens: int = 0  # images included (each is mm_tokens_per_image tokens)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


class MedGemma:
    """Processor + model (+ adapter), a lock, and the slice cap found at load."""

    version = "1.0"

    def __init__(self, settings: ModelSettings) -> None:
        require("torch", "transformers", what="the MedGemma backends")
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        s = settings.medgemma
        self.settings = s
        self.source = resolve(s.model, "pipeline.models.medgemma.model")
        check_available(self.source)
        self.device = pick_device(settings.device)
        self.quantization = resolve_quantization(s.quantization, self.device)
        self.dtype = compute_dtype(self.quantization)
        try:
            self.processor = AutoProcessor.from_pretrained(self.source.path_or_id, **self.source.options())
            model = AutoModelForImageTextToText.from_pretrained(
                self.source.path_or_id, **self.source.options(),
                **precision_options(self.quantization, self.device))
        except ModelUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - every load failure gets the same clear message
            raise loading_error(self.source, exc) from exc
        self.adapter: Source | None = None
        if s.adapter.strip():
            self.adapter = resolve(s.adapter, "pipeline.models.medgemma.adapter")
            check_available(self.adapter, marker="adapter_config.json")
            require("peft", what="pipeline.models.medgemma.adapter")
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, self.adapter.path_or_id, **self.adapter.options())
            except Exception as exc:  # noqa: BLE001
                raise loading_error(self.adapter, exc) from exc
        self.model = model.eval()
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.lock = threading.Lock()
        self.slice_cap = slice_cap_for_memory(self.free_bytes(), s)
        self._torch = torch

    def free_bytes(self) -> int | None:
        """GPU memory free now that the weights are in (None on the CPU)."""
        return free_gpu_bytes() if self.device == "cuda" else None

    @property
    def name(self) -> str:
        return self.source.value

    def describe(self) -> str:
        adapter = f" + LoRA {self.adapter.value}" if self.adapter else ""
        return f"{self.source.value}{adapter} ({self.quantization}, {self.device})"

    # --- inputs -------------------------------------------------------------------------

    def inputs(self, messages: Sequence[Message], images: Sequence[np.ndarray] = ()) -> Any:
        """Chat template + processor: token ids (and pixel values) on the model's device.

        ``messages`` use the chat format of the processor: each user turn's
        content a list of {"type": "text", "text": ...} and {"type": "image"}
        items; ``images`` are the RGB uint8 arrays of the image items, in order.
        """
        batch = prompt_inputs(self.processor, messages, images).to(self.model.device)
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
        return batch

    def prompt_text(self, messages: Sequence[Message]) -> str:
        return self.processor.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)

    def _adapter_context(self, adapter: bool) -> Any:
        if self.adapter is not None and not adapter:
            return self.model.disable_adapter()
        return nullcontext()

    def _generate_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
        return {"max_new_tokens": max_new_tokens, "do_sample": False}

    # --- generation ---------------------------------------------------------------------

    def generate(self, messages: Sequence[Message], images: Sequence[np.ndarray] = (),
                 max_new_tokens: int = 512, adapter: bool = True) -> Generation:
        """One reply, greedy; waits for the model's lock."""
        with self.lock:
            return self.generate_locked(messages, images, max_new_tokens, adapter)

    def generate_locked(self, messages: Sequence[Message], images: Sequence[np.ndarray] = (),
                        max_new_tokens: int = 512, adapter: bool = True) -> Generation:
        """As generate, for a caller that holds ``self.lock`` already."""
        torch = self._torch
        batch = self.inputs(messages, images)
        start = time.perf_counter()
        with torch.inference_mode(), self._adapter_context(adapter):
            out = self.model.generate(**batch, **self._generate_kwargs(max_new_tokens))
        seconds = time.perf_counter() - start
        new = out[0, batch["input_ids"].shape[1]:]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        return Generation(text, int(new.shape[0]), seconds, int(batch["input_ids"].shape[1]))

    def stream(self, messages: Sequence[Message], images: Sequence[np.ndarray] = (),
               max_new_tokens: int = 512, adapter: bool = True) -> Iterator[str]:
        """The reply as text pieces, as they are generated (TextIteratorStreamer).

        The lock is taken when the first piece is asked for and released when
        the generator finishes or is closed; closing it early stops generation.
        """
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        torch = self._torch
        cancelled = threading.Event()

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool,
                                  device=input_ids.device)

        with self.lock:
            batch = self.inputs(messages, images)
            streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                            timeout=600.0)
            failure: list[BaseException] = []

            def work() -> None:
                try:
                    with torch.inference_mode(), self._adapter_context(adapter):
                        self.model.generate(**batch, **self._generate_kwargs(max_new_tokens),
                                            streamer=streamer,
                                            stopping_criteria=StoppingCriteriaList([_Cancelled()]))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    failure.append(exc)
                    streamer.end()

            thread = threading.Thread(target=work, name="medgemma-stream", daemon=True)
            thread.start()
            finished = False
            try:
                for piece in streamer:
                    if piece:
                        yield piece
                finished = True
                if failure:
                    raise failure[0]
            finally:
                if not finished:  # closed early: stop generating, drain what is left
                    cancelled.set()
                    for _ in streamer:
                        pass
                thread.join()


def medgemma(settings: ModelSettings) -> MedGemma:
    """The process's shared MedGemma for these settings (loaded on first use)."""
    s = settings.medgemma
    key = ("medgemma", s.model, s.adapter, s.quantization, settings.device, s.slice_cap,
           s.slice_cap_min, s.slice_cap_max, s.gib_per_slice, s.reserve_gib)
    return shared(key, lambda: MedGemma(settings))
