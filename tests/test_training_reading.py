"""finetune-reading on the tiny Gemma 3: conversations built by the reading's own prompt code,
the loss on the reply only, a LoRA adapter overfitted on a handful of phantom series (with a
checkpoint and a resumed run), loaded by the reading backend through
[pipeline.models.medgemma] adapter, and the reading's JSON format adherence before and after."""

from __future__ import annotations

import json

import numpy as np
import pytest

from support import tiny_models
from support.datasets_support import write_site
from evaluation.dataset import open_dataset
from evaluation.evaluate import Options, run
from evaluation.reading_metrics import format_adherence, organ_accuracy, severity_match
from pipeline import PipelineSettings
from pipeline.backends.medgemma_reading import INSTRUCTIONS, SYSTEM, MedGemmaReading
from pipeline.quantification import VoxelQuantification
from training.finetune_reading import TrainingError, finetune_reading
from training.reading_data import DIFFERENTIAL, encode, reply_text, series_prompt, target_reading
from training.settings import FinetuneReadingSettings

SMALL = dict(slices=40, rows=64, cols=64, pixel_spacing=(5.0, 5.0), slice_spacing=5.0)
CASES = {"P1": ("ft-bleeding", dict(blood="large", blush=True), {"spleen_high": 1, "extravasation_injury": 1}),
         "P2": ("ft-clean", dict(seed=4), {}),
         "P3": ("ft-small", dict(blood="small", seed=2), {"liver_low": 1})}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def site(tmp_path_factory, phantom_factory):
    root = tmp_path_factory.mktemp("ft-site")
    cases = {p: (phantom_factory(name, **SMALL, **spec), labels) for p, (name, spec, labels) in CASES.items()}
    write_site(root, cases, masks=False)
    return root


@pytest.fixture(scope="module")
def base(tmp_path_factory, site):
    """A tiny MedGemma whose vocabulary has merges learned from the prompt and the replies (a
    reply takes about 25 tokens, as in a real vocabulary) and a wider logit range."""
    targets = [json.dumps(target_reading(s.labels)) for s in open_dataset(site).studies]
    return tiny_models.build_medgemma(tmp_path_factory.mktemp("ft-base"), corpus=[SYSTEM, INSTRUCTIONS, *targets],
                                      merges=300, embedding_scale=4.0)


def pipeline_settings(model, adapter=""):
    s = PipelineSettings()
    s.models.device = "cpu"
    m = s.models.medgemma
    m.model, m.adapter, m.slice_cap_max, m.max_new_tokens, m.reask = str(model), str(adapter), 1, 48, False
    return s


def test_targets_follow_the_documented_mapping(site):
    studies = {s.patient_id: s for s in open_dataset(site).studies}
    bleeding, clean, small = (target_reading(studies[p].labels) for p in ("P1", "P2", "P3"))
    assert bleeding["organs_involved"] == ["spleen"] and bleeding["severity_estimate"] == "severe"
    assert "active contrast extravasation present" in bleeding["bleeding_description"]
    assert "high-grade splenic injury" in bleeding["injury_pattern"]
    assert clean == {"injury_pattern": "no traumatic injury", "organs_involved": [],
                     "bleeding_description": "no active contrast extravasation",
                     "severity_estimate": "none", "differential_diagnosis": DIFFERENTIAL}
    assert small["organs_involved"] == ["liver"] and small["severity_estimate"] == "mild"


def test_conversation_is_the_readings_prompt_with_the_loss_on_the_reply_only(site, base):
    from transformers import AutoProcessor

    from pipeline.models.medgemma import prompt_inputs

    settings = pipeline_settings(base)
    study = open_dataset(site).studies[0]
    prompt = series_prompt(study.series[0], settings, 1)
    assert prompt.messages[0]["content"][0]["text"] == SYSTEM
    assert prompt.messages[1]["content"][-1]["text"] == INSTRUCTIONS
    assert len(prompt.images) == 1 and prompt.indices == sorted(prompt.indices)
    processor = AutoProcessor.from_pretrained(base)
    target = json.dumps(target_reading(study.labels))
    encoded = encode(processor, prompt.messages, prompt.images, target)
    node = prompt_inputs(processor, prompt.messages, prompt.images)  # what the node sends
    n = node["input_ids"].shape[1]
    assert encoded["input_ids"][:n].tolist() == node["input_ids"][0].tolist()
    assert (encoded["labels"][:n] == -100).all() and (encoded["labels"][n:] >= 0).all()
    reply = processor.tokenizer.decode(encoded["labels"][n:])
    assert reply == reply_text(processor, prompt.messages, target) and reply.startswith(target)
    assert np.array_equal(encoded["pixel_values"].numpy(), node["pixel_values"].numpy())


def readings(site, settings):
    """The reading backend on every series of the site, as the node runs it."""
    out, labels = [], []
    for study in open_dataset(site).studies:
        prompt = series_prompt(study.series[0], settings, 1)
        empty = np.zeros(prompt.context.volume.hu.shape, np.uint8)
        quantification = VoxelQuantification(settings).run(prompt.context, empty)
        out.append(MedGemmaReading(settings).run(prompt.context, prompt.triage, quantification))
        labels.append(target_reading(study.labels))
    return out, labels


def test_adapter_overfits_and_the_reading_keeps_to_its_format(site, base, tmp_path):
    out = tmp_path / "adapter"
    settings = FinetuneReadingSettings(learning_rate=1e-2, lr_scheduler="constant", warmup_ratio=0.0,
                                       gradient_accumulation_steps=1, held_out_fraction=0.34,
                                       logging_steps=1, eval_steps=10, save_steps=8, max_steps=8,
                                       device="cpu")
    finetune_reading(site, out, settings, pipeline_settings(base), say=lambda _: None)
    assert (out / "checkpoints" / "checkpoint-8").is_dir()
    with pytest.raises(TrainingError, match="--resume to continue"):
        finetune_reading(site, out, settings, pipeline_settings(base), say=lambda _: None)
    settings.max_steps = 32
    record = finetune_reading(site, out, settings, pipeline_settings(base), resume=True, say=lambda _: None)

    losses = dict(record["train_loss"])
    start, end = losses[1], record["train_loss"][-1][1]
    print(f"training loss {start:.3f} -> {end:.3f} ({end / start:.2f}x); held-out loss "
          f"{record['eval_loss']}")
    assert record["steps"] == 32 and end < 0.5 * start
    assert len(record["dataset"]["train"]) == 2 and len(record["dataset"]["held_out"]) == 1
    assert record["eval_loss"], "the held-out patient gives an evaluation loss"

    # What the node loads, with what it came from.
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    readme = (out / "README.md").read_text()
    assert "RESEARCH USE ONLY" in readme and str(site.resolve()) in readme
    saved = json.loads((out / "training.json").read_text())
    assert saved["research_use"].startswith("RESEARCH USE ONLY") and saved["base_model"] == str(base)
    assert {s["patient_id"] for s in saved["dataset"]["train"] + saved["dataset"]["held_out"]} == set(CASES)
    assert saved["settings"]["lora_r"] == 16 and saved["settings"]["neftune_noise_alpha"] == 5.0

    before, expected = readings(site, pipeline_settings(base))
    after, _ = readings(site, pipeline_settings(base, adapter=out))
    assert all(r["adapter"] for r in after) and not any(r["adapter"] for r in before)
    figures = {name: (format_adherence(before), format_adherence(after)) for name in ("format",)}
    organs = [e["organs_involved"] for e in expected]
    severities = [e["severity_estimate"] for e in expected]
    print(f"format adherence {figures['format'][0]:.2f} -> {figures['format'][1]:.2f}; organ accuracy "
          f"{organ_accuracy(before, organs):.2f} -> {organ_accuracy(after, organs):.2f}; severity "
          f"{severity_match(before, severities):.2f} -> {severity_match(after, severities):.2f}")
    assert format_adherence(after) > format_adherence(before)
    assert format_adherence(after) >= 2 / 3

    # And as a site sees it: `trauma-node evaluate` (its run) with and without the adapter.
    dataset, measured = open_dataset(site), []
    for i, adapter in enumerate(("", out)):
        settings = pipeline_settings(base, adapter)
        settings.backends.reading = "medgemma"
        measured.append(run(dataset, settings, Options(tmp_path / f"eval-{i}", bootstrap=0,
                                                       progress=False))["reading"])
    print(f"evaluate: format adherence {measured[0]['format_adherence']:.2f} -> "
          f"{measured[1]['format_adherence']:.2f}")
    assert measured[0]["series"] == measured[1]["series"] == 3
    assert measured[1]["format_adherence"] > measured[0]["format_adherence"]
