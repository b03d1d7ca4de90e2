"""bench/gpu_pipeline.py: the full-size architectures are the real ones, and the script runs.

CI has no GPU, so the benchmark's figures come from a GPU host; these tests keep the
script from rotting in between: its model configurations have the published sizes,
and a CPU run with the tiny models goes through every stage and writes its figures.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_pipeline.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("gpu_pipeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parameters_on_meta(model_class, config) -> int:
    with torch.device("meta"):
        model = model_class(config)
    return sum(p.numel() for p in model.parameters())


def test_the_full_size_configurations_have_the_published_sizes():
    from transformers import Gemma3ForConditionalGeneration, SiglipModel

    bench = load_bench()
    gemma = parameters_on_meta(Gemma3ForConditionalGeneration, bench.medgemma_4b_config(bench.gemma_tokenizer()))
    siglip = parameters_on_meta(SiglipModel, bench.medsiglip_448_config())
    # MedGemma 1.5 4B (Gemma 3 4B with its 400M SigLIP tower): 4.3 B; MedSigLIP: two 400M towers.
    assert 4.25e9 < gemma < 4.35e9, gemma
    assert 0.85e9 < siglip < 0.92e9, siglip


def test_the_benchmark_tokenizer_makes_the_prompt_words_single_tokens(phantom_factory):
    """So that the prompts of the random-weight MedGemma are about as long as real ones."""
    from pipeline import PipelineSettings, run_series
    from pipeline.backends.medgemma_report import MedGemmaReport

    bench = load_bench()
    truth = phantom_factory("bench-tokenizer", slices=20, rows=96, cols=96, pixel_spacing=(4.2, 4.2),
                            slice_spacing=5.0, blood="large", blush=True)
    tok = bench.gemma_tokenizer(bench.prompt_words(truth.paths))
    assert len(tok) == bench.GEMMA_VOCAB
    assert tok.tokenize("Use only the facts given") == ["Use", "\u2581only", "\u2581the", "\u2581facts",
                                                          "\u2581given"]
    # Bare words too (JSON keys), and the chat markers, as the real tokenizer has them.
    assert tok.tokenize('{"volumes_ml": 3.5}') == ["{", '"', "volumes", "_", "ml", '"', ":", "\u2581",
                                                    "3", ".", "5", "}"]
    assert tok.tokenize("<start_of_turn>model\n")[0] == "<start_of_turn>"
    messages = MedGemmaReport(PipelineSettings()).messages(run_series(truth.paths, PipelineSettings()))
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    tokens = len(tok(prompt)["input_ids"])
    plain = len(bench.gemma_tokenizer()(prompt)["input_ids"])  # one token a character
    assert tokens < 0.45 * plain, (tokens, plain)  # 933 of 2315 when written; 1157 before bare words


def test_the_benchmark_runs_every_model_stage_on_the_cpu_with_the_tiny_models(tmp_path):
    out = tmp_path / "figures.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--size", "tiny", "--device", "cpu", "--quantization", "fp32",
         "--slices", "10", "--slice-cap", "3", "--reading-tokens", "16", "--report-tokens", "16",
         "--runs", "1", "--workdir", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["size"] == "tiny" and figures["slices"] == 10
    (run,) = figures["runs"]
    for stage in ("triage", "segmentation", "reading", "report"):
        assert run["stages_s"][stage] > 0, stage
        assert run["peak_gib"][stage] > 0, stage
    assert run["slice_cap"] == 3 and run["slices_read"] == 3
    reading, report = run["generations"]
    assert reading["images"] == 3 and reading["new_tokens"] > 0 and reading["tokens_per_s"] > 0
    assert report["images"] == 0 and report["new_tokens"] > 0
    assert reading["prompt_tokens"] > 0 and report["prompt_tokens"] > 0
    assert "tokens/s" in done.stdout and "segmentation" in done.stdout
