"""Model loading: sources, start-up checks with what-to-do messages, precision, one load per
process, the lock, streaming, the slice cap. Tiny random-weight models of the real classes
(tests/support/tiny_models.py) go through the same loading code as the real weights."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from support import tiny_models
from pipeline import PipelineSettings
from pipeline.models import ModelUnavailable, needed, preflight
from pipeline.models import loading
from pipeline.models.medgemma import MedGemma, medgemma, slice_cap_for_memory
from pipeline.settings import MedGemmaSettings

GIB = 2**30
MESSAGES = [{"role": "user", "content": [{"type": "text", "text": "Slice 3 (z = 10.0 mm):"},
                                         {"type": "image"}, {"type": "text", "text": "Describe."}]}]
IMAGE = [np.full((40, 40, 3), 90, np.uint8)]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_embedded_default_needs_no_model():
    settings = PipelineSettings()
    assert needed(settings) == []
    assert preflight(settings) == []


def test_missing_local_directory_fails_at_start_with_the_key(tmp_path):
    s = PipelineSettings()
    s.backends.reading = "medgemma"
    s.models.medgemma.model = str(tmp_path / "nowhere")
    with pytest.raises(ModelUnavailable, match=r"pipeline\.models\.medgemma\.model .*no such directory"):
        preflight(s)
    (tmp_path / "empty").mkdir()
    s.models.medgemma.model = str(tmp_path / "empty")
    with pytest.raises(ModelUnavailable, match="has no config.json"):
        preflight(s)


def test_hub_id_offline_and_not_cached_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    s = PipelineSettings()
    s.backends.triage = "medsiglip"
    with pytest.raises(ModelUnavailable) as err:
        preflight(s)
    message = str(err.value)
    assert "google/medsiglip-448" in message and "HF_HUB_OFFLINE" in message
    assert "huggingface-cli download google/medsiglip-448" in message


def test_gated_model_message_says_accept_licence_and_set_token(monkeypatch):
    from huggingface_hub import errors as hub_errors
    import huggingface_hub

    seen = {}

    def gated(repo_id, filename, token=None, local_files_only=False):
        seen.update(repo_id=repo_id, token=token, local_files_only=local_files_only)
        response = type("R", (), {"headers": {}, "status_code": 401, "request": None, "url": ""})()
        raise hub_errors.GatedRepoError("gated", response=response)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    s = PipelineSettings()
    s.backends.reading = "medgemma"
    with pytest.raises(ModelUnavailable, match="gated.*licence.*HF_TOKEN"):
        preflight(s)
    assert seen == {"repo_id": "google/medgemma-1.5-4b-it", "token": "hf_test_token",
                    "local_files_only": False}


def test_missing_adapter_and_unet_checkpoint_fail_at_start(tmp_path):
    s = tiny_models.model_settings(reading="medgemma")
    s.models.medgemma.adapter = str(tmp_path / "no-adapter")
    with pytest.raises(ModelUnavailable, match=r"medgemma\.adapter"):
        preflight(s)
    s = PipelineSettings()
    s.backends.segmentation = "unet"
    with pytest.raises(ModelUnavailable, match="refuses to run with random weights"):
        preflight(s)
    s.models.unet.checkpoint = str(tmp_path / "missing.pt")
    with pytest.raises(ModelUnavailable, match="no such file"):
        preflight(s)


def test_hub_options_honour_token_and_offline(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abc")
    source = loading.resolve("google/medgemma-1.5-4b-it", "k")
    assert source.hub_id == "google/medgemma-1.5-4b-it"
    assert source.options() == {"token": "hf_abc", "local_files_only": True}
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert source.options()["local_files_only"] is False
    assert loading.resolve("/opt/models/medgemma", "k").local is not None


def test_precision_by_device():
    import torch

    assert loading.resolve_quantization("auto", "cuda") == "4bit"
    assert loading.resolve_quantization("auto", "cpu") == "fp32"
    q = loading.precision_options("4bit", "cuda")["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_compute_dtype == torch.bfloat16
    assert loading.precision_options("8bit", "cuda")["quantization_config"].load_in_8bit
    assert loading.precision_options("bf16", "cpu")["dtype"] == torch.bfloat16
    assert loading.precision_options("fp32", "cpu") == {"device_map": "cpu", "dtype": torch.float32}


def test_slice_cap_follows_the_memory_given():
    s = MedGemmaSettings()  # reserve 1.5 GiB, 0.25 GiB a slice, 1..16
    assert slice_cap_for_memory(None, s) == 16  # CPU: the configured maximum
    assert slice_cap_for_memory(int(3.0 * GIB), s) == 6
    assert slice_cap_for_memory(int(2.0 * GIB), s) == 2
    assert slice_cap_for_memory(int(0.5 * GIB), s) == 1  # never below the minimum
    assert slice_cap_for_memory(80 * GIB, s) == 16  # never above the maximum
    s.slice_cap_max = 64
    assert slice_cap_for_memory(12 * GIB, s) == 42
    s.slice_cap = 5  # fixed in config
    assert slice_cap_for_memory(80 * GIB, s) == 5


def test_slice_cap_is_measured_at_load(monkeypatch):
    s = tiny_models.model_settings(reading="medgemma")
    s.models.medgemma.slice_cap_max = 12
    assert MedGemma(s.models).slice_cap == 12  # CPU
    # As on a GPU with 2.5 GiB free once the weights are in: (2.5 - 1.5) / 0.25 = 4 slices.
    monkeypatch.setattr(MedGemma, "free_bytes", lambda self: int(2.5 * GIB))
    assert MedGemma(s.models).slice_cap == 4


def test_loaded_once_per_process_and_preflight_load():
    s = tiny_models.model_settings(triage="medsiglip", reading="medgemma", report="medgemma",
                                   segmentation="unet")
    lines = preflight(s)
    assert [line.split(":")[0] for line in lines] == ["medsiglip", "unet", "medgemma"]
    lines = preflight(s, load=True)
    assert "slice cap 16" in lines[2]
    assert medgemma(s.models) is medgemma(s.models)
    from pipeline.models.medsiglip import medsiglip
    from pipeline.models.unet import unet

    assert medsiglip(s.models) is medsiglip(s.models)
    assert unet(s.models) is unet(s.models)


def test_one_generation_at_a_time_and_streaming():
    s = tiny_models.model_settings(reading="medgemma")
    model = medgemma(s.models)
    inner = model.model.generate
    active, peak = [0], [0]
    guard = threading.Lock()

    def counting(*args, **kwargs):
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        try:
            return inner(*args, **kwargs)
        finally:
            with guard:
                active[0] -= 1

    model.model.generate = counting
    try:
        results: list[str] = []
        threads = [threading.Thread(target=lambda: results.append(model.generate(MESSAGES, IMAGE, 12).text))
                   for _ in range(3)]
        threads.append(threading.Thread(target=lambda: results.append("".join(model.stream(MESSAGES, IMAGE, 12)))))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        del model.model.generate
    assert peak[0] == 1, "two generations ran on one model at once"
    assert len(set(results)) == 1 and results[0]  # greedy: the stream gives the same text
    stream = model.stream(MESSAGES, IMAGE, 12)
    first = next(stream)
    assert first and model.lock.locked()
    stream.close()  # the client went away
    assert not model.lock.locked()


@pytest.mark.parametrize("quantization", ["4bit", "8bit", "bf16"])
def test_quantised_loads_run_on_the_cpu(quantization):
    s = tiny_models.model_settings(reading="medgemma")
    s.models.medgemma.quantization = quantization
    model = MedGemma(s.models)
    assert model.quantization == quantization
    if quantization == "4bit":
        import bitsandbytes as bnb

        layers = [m for m in model.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert layers and all("vision_tower" not in n for n, m in model.model.named_modules()
                              if isinstance(m, bnb.nn.Linear4bit))
    generation = model.generate(MESSAGES, IMAGE, 8)
    assert generation.new_tokens > 0


def test_without_the_models_extra_the_embedded_node_still_works_and_says_what_to_install():
    import subprocess
    import sys

    code = """
import sys
sys.modules["torch"] = None  # as on a base install: import torch fails
import pipeline
from pipeline import PipelineSettings
from pipeline.models import ModelUnavailable, preflight
assert preflight(PipelineSettings()) == []
s = PipelineSettings()
s.backends.reading = "medgemma"
try:
    preflight(s)
except ModelUnavailable as exc:
    print(exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "trauma-node[models]" in out.stdout
