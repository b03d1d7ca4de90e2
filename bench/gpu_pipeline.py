"""GPU benchmark: the pipeline with every model backend at full size, random weights.

    .venv/bin/python bench/gpu_pipeline.py [--slices 300] [--quantization 4bit] [--workdir DIR]
                                           [--reading-tokens 256] [--report-tokens 300] [--runs 2]
                                           [--device cuda|cpu] [--size full|tiny] [--slice-cap N]

Builds MedGemma 1.5 4B (Gemma 3 4B: 34 layers, hidden 2560, SigLIP-400M vision tower at
896 px, 256 tokens per image, 262k vocabulary) and MedSigLIP-448 (SigLIP-400M image and
text towers at 448 px) from their configurations with random weights, a random
ResNet34 U-Net checkpoint, saves them like the real ones and loads them through the
pipeline's own loading code (4-bit NF4 by default), then runs a 300-slice 512x512
phantom series through run_series. No weights are downloaded: the tokenizer is the
byte-fallback one of tests/support/tiny_models.py with the prompts' words as single tokens (so
prompts are about as long as with the real tokenizer), padded to the real vocabulary size.

Prints the load time, per-stage latency and peak GPU memory of each stage (the
second run: the first warms the CUDA kernels up), and MedGemma's tokens per second
for the reading and the report. Random weights never stop early, so every generation
runs to its token limit (a real reply stops at its end of turn): the figures are an
upper bound for the generation part. Needs a CUDA GPU by default; CI runs it only as
below, with --size tiny on the CPU (tests/test_bench_gpu_pipeline.py).

``--device cpu`` runs the same code on the CPU (peak memory is then the process's
maximum resident set), e.g. ``--size full --slices 20 --slice-cap 2 --reading-tokens 16 --report-tokens 16``
as a CPU reference of the full-size architectures; ``--size tiny`` uses the tests' tiny
models instead, so that the test suite can check this script still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pipeline.models.loading import release_memory  # noqa: E402 - after the path is set

GEMMA_VOCAB = 262_208
SIGLIP_VOCAB = 32_000


def padded_tokenizer(size: int, words: Sequence[str] = (), **kwargs):
    """The tests' byte-fallback tokenizer, with one token (and BPE merges) for each of
    ``words``, and filler tokens up to the real vocabulary size."""
    from transformers import GemmaTokenizer

    from support import tiny_models

    vocab = {tok: i for i, tok in enumerate(tiny_models.SPECIAL + tiny_models.BYTE_TOKENS)}
    for ch in tiny_models.CHARS:
        vocab.setdefault(ch, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:  # each prefix merged with the next character: the word becomes one token
        for end in range(2, len(word) + 1):
            if word[:end] not in vocab:
                vocab[word[:end]] = len(vocab)
                merges.append((word[:end - 1], word[end - 1]))
    for i in range(len(vocab), size):
        vocab[f"<unused{i}>"] = i
    return GemmaTokenizer(vocab=vocab, merges=merges, **kwargs)


def prompt_words(paths: Sequence[Path]) -> list[str]:
    """The words MedGemma's prompts are made of: those of the modules that write the
    prompts, and of the embedded pipeline's report and facts on this series. As single
    tokens (the real Gemma tokenizer has 262k), prompts count about as many tokens as with
    the real tokenizer; numbers and punctuation stay one token a character (Gemma splits
    digits too)."""
    import json
    import re

    from pipeline import PipelineSettings, run_series
    from pipeline.backends import medgemma_answering, medgemma_reading, medgemma_report

    findings = run_series(list(paths), PipelineSettings())
    texts = [Path(m.__file__).read_text() for m in (medgemma_reading, medgemma_report,
                                                     medgemma_answering)]
    texts += [findings.report, json.dumps(medgemma_report.report_facts(findings), default=str)]
    found = sorted({w for text in texts for w in re.findall(r"[A-Za-z]+", text)})
    # After a space (SentencePiece's mark) and bare (in JSON keys, after punctuation).
    return [f"\u2581{w}" for w in found] + found


def gemma_tokenizer(words: Sequence[str] = ()):
    """The stand-in for Gemma's tokenizer: each of ``words`` one token wherever it stands
    (after a space, in a JSON key, after punctuation), the chat markers one token each,
    anything else one token a character."""
    from tokenizers import Regex, pre_tokenizers

    from support import tiny_models

    tok = padded_tokenizer(GEMMA_VOCAB, words, extra_special_tokens={
        "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"})
    tok.chat_template = tiny_models.CHAT_TEMPLATE
    backend = tok.backend_tokenizer
    # Each run of letters (with the space mark before it) is looked up whole: BPE merges
    # alone let the words' merges pre-empt one another, leaving pieces.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("\u2581?[A-Za-z]+|[^A-Za-z]"), "isolated")
    backend.model.ignore_merges = True
    tok.add_tokens(["<start_of_turn>", "<end_of_turn>"], special_tokens=True)
    return tok


def medgemma_4b_config(tok):
    """google/medgemma-1.5-4b-it's architecture (Gemma 3 4B), token ids from tok."""
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    ids = tok.convert_tokens_to_ids
    layers = 34
    return Gemma3Config(
        text_config=Gemma3TextConfig(
            hidden_size=2560, intermediate_size=10240, num_hidden_layers=layers, num_attention_heads=8,
            num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256, sliding_window=1024,
            layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)],
            vocab_size=GEMMA_VOCAB, rope_theta=1_000_000.0, max_position_embeddings=131_072,
            pad_token_id=ids("<pad>"), bos_token_id=ids("<bos>"), eos_token_id=ids("<eos>")),
        vision_config=SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                         num_attention_heads=16, image_size=896, patch_size=14,
                                         vision_use_head=False),
        mm_tokens_per_image=256, boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"), image_token_index=ids("<image_soft_token>"))


def medsiglip_448_config():
    """google/medsiglip-448's architecture (SigLIP-400M image and text towers, 448 px)."""
    from transformers import SiglipConfig

    return SiglipConfig(
        text_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                         num_attention_heads=16, max_position_embeddings=64, vocab_size=SIGLIP_VOCAB),
        vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                           num_attention_heads=16, image_size=448, patch_size=14))


def build_medgemma_4b(out: Path, device: str, words: Sequence[str]) -> None:
    import torch
    from transformers import Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    from support import tiny_models

    tok = gemma_tokenizer(words)
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessor(size={"height": 896, "width": 896}),
                                tokenizer=tok, chat_template=tiny_models.CHAT_TEMPLATE, image_seq_length=256)
    ids = tok.convert_tokens_to_ids
    # Built directly in bf16: 4.3 B parameters in fp32 would need 17 GB first.
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Gemma3ForConditionalGeneration(medgemma_4b_config(tok)).eval()
    finally:
        torch.set_default_dtype(default)
    gen = model.generation_config
    gen.eos_token_id = [ids("<eos>"), ids("<end_of_turn>")]
    gen.pad_token_id = ids("<pad>")
    gen.do_sample = False
    model.save_pretrained(out)
    processor.save_pretrained(out)
    del model
    release_memory()


def build_medsiglip_448(out: Path, device: str) -> None:
    import torch
    from transformers import SiglipImageProcessor, SiglipModel, SiglipProcessor

    tok = padded_tokenizer(SIGLIP_VOCAB, add_eos_token=True, model_max_length=64, padding_side="right")
    processor = SiglipProcessor(SiglipImageProcessor(size={"height": 448, "width": 448}), tok)
    with torch.device(device):
        model = SiglipModel(medsiglip_448_config()).eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    del model
    release_memory()


def build_models(work: Path, size: str, device: str, paths: Sequence[Path]) -> None:
    """The three models in work/ (kept there: a second run with the same --workdir reuses them)."""
    from support import tiny_models

    if not (work / "medgemma" / "config.json").exists():
        if size == "full":
            build_medgemma_4b(work / "medgemma", device, prompt_words(paths))
        else:
            tiny_models.build_medgemma(work / "medgemma")
    if not (work / "medsiglip" / "config.json").exists():
        if size == "full":
            build_medsiglip_448(work / "medsiglip", device)
        else:
            tiny_models.build_medsiglip(work / "medsiglip")
    if not (work / "unet.pt").exists():
        tiny_models.build_unet_checkpoint(work / "unet.pt")


class PeakMemory:
    """Peak memory of each stage: allocated CUDA memory, or the process's resident set on the CPU."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peaks: dict[str, float] = {}

    def observer(self, stage: str, event: str) -> None:
        import torch

        if self.device != "cuda":
            if event == "end":
                self.peaks[stage] = max_rss_gib()
            return
        torch.cuda.synchronize()
        if event == "start":
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peaks[stage] = torch.cuda.max_memory_allocated() / 2**30


def max_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--quantization", default="4bit", choices=["4bit", "8bit", "bf16", "fp32"])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--reading-tokens", type=int, default=256)
    parser.add_argument("--report-tokens", type=int, default=300)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--size", default="full", choices=["full", "tiny"],
                        help="full: the real architectures; tiny: the tests' tiny models (a smoke run)")
    parser.add_argument("--slice-cap", type=int, default=0,
                        help="slices MedGemma reads (0: from the GPU memory free after loading)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu_pipeline.py needs a CUDA GPU (or --device cpu for a CPU run)")
    os.environ["HF_HUB_OFFLINE"] = "1"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    from support.phantom import PhantomSpec, write_series
    from support.tiny_models import lift_plausibility_limits
    from pipeline import PipelineSettings, run_series
    from pipeline.models import preflight
    from pipeline.models.medgemma import MedGemma

    t0 = time.perf_counter()
    series_dir = work / f"series-{args.slices}"
    if not series_dir.exists():
        write_series(PhantomSpec(slices=args.slices, slice_spacing=300.0 / args.slices, blood="large",
                                 blush=True), series_dir)
    paths = sorted(series_dir.glob("*.dcm"))
    build_models(work, args.size, args.device, paths)
    print(f"built {args.size}-size models and a {len(paths)}-slice series in "
          f"{time.perf_counter() - t0:.1f} s ({work})", flush=True)

    s = PipelineSettings()
    s.backends.triage, s.backends.segmentation = "medsiglip", "unet"
    s.backends.reading, s.backends.report = "medgemma", "medgemma"
    m = s.models
    m.device = args.device
    m.medsiglip.model = str(work / "medsiglip")
    m.medsiglip.threshold = 0.01  # random weights: let the cap decide how many slices are read
    lift_plausibility_limits(s)  # a random U-Net's masks are implausible: still time every stage
    m.medgemma.model = str(work / "medgemma")
    m.medgemma.quantization = args.quantization
    m.medgemma.max_new_tokens = args.reading_tokens
    m.medgemma.report_max_new_tokens = args.report_tokens
    m.medgemma.slice_cap = args.slice_cap
    m.medgemma.reask = False  # random weights never give JSON; a real reply parses first time
    m.unet.checkpoint = str(work / "unet.pt")

    t0 = time.perf_counter()
    lines = preflight(s, load=True)
    load_s = time.perf_counter() - t0
    print(f"loaded in {load_s:.1f} s: " + "; ".join(lines), flush=True)
    if args.device == "cuda":
        print(f"GPU memory after loading: {torch.cuda.memory_allocated() / 2**30:.2f} GiB allocated")

    generations: list[tuple[int, int, int, float]] = []  # (images, prompt tokens, new tokens, seconds)
    original = MedGemma.generate_locked

    def recording(self, messages, images=(), max_new_tokens=512, adapter=True):
        result = original(self, messages, images, max_new_tokens, adapter)
        if args.device == "cuda":
            torch.cuda.synchronize()
        generations.append((len(images), result.prompt_tokens, result.new_tokens, result.seconds))
        return result

    MedGemma.generate_locked = recording
    memory = PeakMemory(args.device)

    results = []
    for run in range(args.runs):
        generations.clear()
        memory.peaks.clear()
        t0 = time.perf_counter()
        findings = run_series(paths, s, observer=memory.observer)
        total = time.perf_counter() - t0
        stages = {p.stage: p.seconds for p in findings.provenance.stages}
        results.append({"run": run + 1, "total_s": round(total, 2), "stages_s": stages,
                        "peak_gib": {k: round(v, 2) for k, v in memory.peaks.items()},
                        "slices_read": len(findings.reading.get("slices_considered", [])),
                        "slice_cap": findings.reading.get("slice_cap"),
                        "generations": [{"images": i, "prompt_tokens": p, "new_tokens": n,
                                         "seconds": round(sec, 2),
                                         "tokens_per_s": round(n / sec, 1) if sec else 0.0}
                                        for i, p, n, sec in generations]})
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    memory_kind = "peak GPU GiB" if args.device == "cuda" else "max RSS GiB"
    print(f"\n{device}, {args.size} size, {args.quantization}, {len(paths)} slices 512x512, "
          f"torch {torch.__version__}")
    for r in results:
        print(f"run {r['run']}: total {r['total_s']:.2f} s; slices read by MedGemma {r['slices_read']} "
              f"(cap {r['slice_cap']})")
        print(f"  stage            seconds   {memory_kind}")
        for stage, sec in r["stages_s"].items():
            print(f"  {stage:<15} {sec:>8.2f}   {r['peak_gib'].get(stage, 0.0):>8.2f}")
        for g in r["generations"]:
            print(f"  generation: {g['images']} images, prompt {g['prompt_tokens']} tokens, "
                  f"{g['new_tokens']} new tokens in {g['seconds']} s = {g['tokens_per_s']} tokens/s")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "size": args.size,
                                         "quantization": args.quantization, "slices": len(paths),
                                         "load_s": round(load_s, 1), "runs": results}, indent=1))


if __name__ == "__main__":
    main()
