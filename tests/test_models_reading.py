"""MedGemma reading and report on the tiny Gemma 3: the prompt (images in anatomical order,
labelled with index and z), the JSON path (valid, repaired, re-asked, invalid), the LoRA
adapter, the out-of-memory fallback, the reconciliation with the segmentation."""

from __future__ import annotations

import numpy as np
import pytest

from support import tiny_models
from support.phantom import PhantomSpec, make_volume
from pipeline.anatomy import build_anatomy
from pipeline.backends.medgemma_reading import MedGemmaReading, pick_slices, reading_messages
from pipeline.findings import OrganFinding, TriageResult
from pipeline.models.imaging import slice_rgb
from pipeline.models.medgemma import Generation, medgemma
from pipeline.quantification import VoxelQuantification
from pipeline.reading_json import parse_reading
from pipeline.reconcile import reconcile
from pipeline.stages import StageContext
from pipeline.volume import SliceRef, Volume

VALID = ('{"injury_pattern": "splenic laceration with hemoperitoneum", "organs_involved": ["spleen"], '
         '"bleeding_description": "perisplenic hematoma and blood in the pelvis", '
         '"severity_estimate": "moderate", "differential_diagnosis": ["splenic injury"]}')


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def study():
    """A small phantom volume (blood and a blush), its context, triage and segmentation."""
    spec = PhantomSpec(slices=24, rows=96, cols=96, pixel_spacing=(4.2, 4.2), slice_spacing=6.0,
                       blood="large", blush=True)
    hu, labels, spacing = make_volume(spec)
    top = (spec.slices - 1) * spec.slice_spacing / 2
    slices = [SliceRef(f"1.2.3.{k}", None, (0.0, 0.0, top - k * spec.slice_spacing)) for k in range(len(hu))]
    volume = Volume(hu, spacing, (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), slices,
                    "1.2.3", "1.2.3.4", "1.2.3.5", "CT")
    settings = tiny_models.model_settings(reading="medgemma", report="medgemma")
    anatomy = build_anatomy(volume, settings)
    context = StageContext(volume, settings, anatomy, "unknown")
    quantification = VoxelQuantification(settings).run(context, labels)
    scores = [round(float(v), 3) for v in np.linspace(0.1, 0.9, len(hu))[::-1]]
    triage = TriageResult(scores=scores, chosen=[3, 7, 11, 15, 19], threshold=0.5, method="test")
    return context, triage, quantification


def reading_with(study, monkeypatch, replies=None, settings=None, fail=None):
    """Run the reading backend; replies (if given) stand in for the model's text, in order.
    Every call still goes through the real processor and chat template."""
    context, triage, quantification = study
    settings = settings or tiny_models.model_settings(reading="medgemma", report="medgemma")
    context.settings = settings
    context.notes = []
    model = medgemma(settings.models)
    calls = []
    real = model.generate_locked

    def stand_in(messages, images=(), max_new_tokens=512, adapter=True):
        calls.append((messages, list(images)))
        if fail is not None:
            fail(len(images))
        generation = real(messages, images, 4, adapter)  # the real tiny model runs too
        if replies is None:
            return generation
        return Generation(replies[min(len(calls), len(replies)) - 1], 10, 0.01)

    monkeypatch.setattr(model, "generate_locked", stand_in)
    monkeypatch.setattr(model, "slice_cap", model.slice_cap)
    reading = MedGemmaReading(settings).run(context, triage, quantification)
    return reading, calls, context.notes


def test_images_in_anatomical_order_labelled_with_index_and_z(study, monkeypatch):
    context, triage, _ = study
    messages, images = reading_messages(context, [15, 3, 11], 0, (50.0, 400.0))
    items = messages[1]["content"]
    labels = [i["text"] for i in items if i["type"] == "text" and i["text"].startswith("Slice")]
    assert labels == [f"Slice {k} (z = {context.volume.slices[k].position[2]:.1f} mm):" for k in (3, 11, 15)]
    kinds = [i["type"] for i in items[1:-1]]
    assert kinds == ["text", "image"] * 3  # each label right before its image
    for image, k in zip(images, (3, 11, 15)):
        assert np.array_equal(image, slice_rgb(context.volume.hu, k, 50.0, 400.0))
    # Through the real processor: the labels come in order, each followed by its image tokens.
    model = medgemma(context.settings.models)
    prompt = model.prompt_text(messages)
    positions = [prompt.index(f"Slice {k} ") for k in (3, 11, 15)]
    assert positions == sorted(positions)
    assert prompt.count("<start_of_image>") == 3
    batch = model.inputs(messages, images)
    assert batch["pixel_values"].shape[0] == 3
    # 2.5D: neighbours in red and blue.
    _, images = reading_messages(context, [11], 1, (50.0, 400.0))
    assert np.array_equal(images[0][:, :, 0], slice_rgb(context.volume.hu, 10, 50.0, 400.0)[:, :, 0])
    assert np.array_equal(images[0][:, :, 2], slice_rgb(context.volume.hu, 12, 50.0, 400.0)[:, :, 0])


def test_the_best_slices_up_to_the_cap_in_anatomical_order():
    triage = TriageResult(scores=[0.1, 0.9, 0.2, 0.8, 0.95, 0.3], chosen=[1, 3, 4, 5], threshold=0.3,
                          method="t")
    assert pick_slices(triage, 2) == ([1, 4], None)
    assert pick_slices(triage, 10) == ([1, 3, 4, 5], None)
    none = TriageResult(scores=[0.1, 0.2, 0.05], chosen=[], threshold=0.5, method="t")
    picked, note = pick_slices(none, 2)
    assert picked == [0, 1] and "no slice reached" in note


def test_real_tiny_model_end_to_end_records_raw_text(study, monkeypatch):
    reading, calls, notes = reading_with(study, monkeypatch)
    assert [len(images) for _, images in calls][0] == 5
    assert reading["slices_considered"] == [3, 7, 11, 15, 19]
    assert reading["raw_text"] == reading["raw_texts"][-1]
    assert reading["parsed"] is False and reading["attempts"] == 2  # random weights: no JSON, asked again
    assert reading["source"].startswith("rules-baseline")
    assert reading["injury_pattern"]  # the rules reading fills the fields
    assert any("not valid JSON" in n for n in notes)
    assert [s["index"] for s in reading["slices_sent"]] == [3, 7, 11, 15, 19]
    assert reading["generation"]["new_tokens"] > 0
    # Both attempts' prompts, each with five images of GEMMA_TOKENS soft tokens.
    assert reading["generation"]["prompt_tokens"] > 2 * 5 * tiny_models.GEMMA_TOKENS


def test_valid_reply_parses_first_time(study, monkeypatch):
    reading, calls, _ = reading_with(study, monkeypatch, [VALID])
    assert len(calls) == 1
    assert reading["parsed"] and not reading["repaired"] and reading["attempts"] == 1
    assert reading["source"] == "medgemma" and reading["organs_involved"] == ["spleen"]
    assert reading["raw_text"] == VALID


def test_near_miss_is_repaired(study, monkeypatch):
    fenced = "Here is the reading:\n```json\n" + VALID.replace('"moderate"', '"Moderate"')[:-1] + ",}\n```"
    reading, calls, _ = reading_with(study, monkeypatch, [fenced])
    assert len(calls) == 1 and reading["parsed"] and reading["repaired"]
    assert reading["severity_estimate"] == "moderate"


def test_invalid_reply_is_asked_again_once(study, monkeypatch):
    reading, calls, _ = reading_with(study, monkeypatch, ['{"injury_pattern": "x"}', VALID])
    assert len(calls) == 2 and reading["parsed"] and reading["attempts"] == 2
    reask = calls[1][0]
    assert reask[-2]["role"] == "assistant" and "missing key" in reask[-1]["content"][0]["text"]
    assert reading["raw_texts"] == ['{"injury_pattern": "x"}', VALID]


def test_invalid_twice_falls_back_to_rules_and_says_so(study, monkeypatch):
    reading, calls, notes = reading_with(study, monkeypatch, ["no idea", "still prose"])
    assert len(calls) == 2 and not reading["parsed"]
    assert "no JSON object" in reading["parse_error"] and reading["raw_text"] == "still prose"
    assert reading["source"].startswith("rules-baseline")


def test_out_of_memory_retries_with_fewer_slices(study, monkeypatch):
    import torch

    def oom_above_two(images: int) -> None:
        if images > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    reading, calls, notes = reading_with(study, monkeypatch, [VALID], fail=oom_above_two)
    assert [len(images) for _, images in calls] == [5, 2]
    assert len(reading["slices_considered"]) == 2 and reading["slices_requested"] == 5
    assert "out of memory with 5 slice(s)" in reading["slice_reduction"]
    assert reading["parsed"]  # the study still completes
    # The two best-scoring of the chosen slices, in anatomical order.
    assert reading["slices_considered"] == [3, 7]
    assert any("out of memory" in n for n in notes)
    model = medgemma(study[0].settings.models)
    assert model.slice_cap == 2  # later studies start lower (restored after the test)


def test_out_of_memory_on_one_slice_gives_the_rules_reading(study, monkeypatch):
    def always(images: int) -> None:
        raise RuntimeError("CUDA error: out of memory")

    reading, _, notes = reading_with(study, monkeypatch, [VALID], fail=always)
    assert reading["source"] == "rules-baseline (MedGemma ran out of memory)"
    assert "could not read any slice" in reading["slice_reduction"]
    assert reading["injury_pattern"]


def test_other_errors_are_not_swallowed(study, monkeypatch):
    def broken(images: int) -> None:
        raise ValueError("processor broke")

    with pytest.raises(ValueError, match="processor broke"):
        reading_with(study, monkeypatch, [VALID], fail=broken)


def test_lora_adapter_loads_and_changes_the_output(study):
    context, triage, _ = study
    plain = tiny_models.model_settings(reading="medgemma")
    with_adapter = tiny_models.model_settings(reading="medgemma", adapter=True)
    base, tuned = medgemma(plain.models), medgemma(with_adapter.models)
    from peft import PeftModel

    assert isinstance(tuned.model, PeftModel) and "LoRA" in tuned.describe()
    messages, images = reading_messages(context, [7, 11], 0, (50.0, 400.0))
    on = tuned.generate(messages, images, 16, adapter=True).text
    off = tuned.generate(messages, images, 16, adapter=False).text
    reference = base.generate(messages, images, 16).text
    assert on != off
    assert off == reference  # switched off, the adapter leaves the base model as it was


def test_parse_reading_cases():
    assert parse_reading(VALID).parsed and not parse_reading(VALID).repaired
    cut = parse_reading(VALID[:-3])  # cut at the token limit inside the last list
    assert cut.parsed and cut.repaired
    single = parse_reading(VALID.replace('"', "'"))
    assert single.parsed and single.repaired
    as_string = parse_reading(VALID.replace('["spleen"]', '"spleen, liver"'))
    assert as_string.value["organs_involved"] == ["spleen", "liver"]
    bad = parse_reading(VALID.replace('"moderate"', '"purple"'))
    assert not bad.parsed and "severity_estimate" in bad.error
    extra = parse_reading(VALID[:-1] + ', "grade": 3}')
    assert extra.parsed and extra.repaired and "grade" not in extra.value
    assert not parse_reading("").parsed


def _organ(name: str, adjacent: float = 0.0, blush: bool = False) -> OrganFinding:
    return OrganFinding(name, True, adjacent, 0.0, 0.0, False, blush, None, None, [], "")


def test_reconciliation_keeps_both_and_states_disagreements():
    reading = {"parsed": True, "injury_pattern": "splenic laceration", "organs_involved": ["spleen", "liver"],
               "bleeding_description": "no active extravasation; perisplenic hematoma",
               "severity_estimate": "mild", "differential_diagnosis": []}
    organs = {"spleen": _organ("spleen", 120.0, blush=True), "liver": _organ("liver"),
              "kidney_left": _organ("kidney_left", 10.0)}
    result = reconcile(reading, {"hemorrhage": 130.0, "active_extravasation": 4.0}, organs, "high")
    assert result["compared"] and not result["agree"]
    text = " | ".join(result["disagreements"])
    assert "4.0 mL of active extravasation" in text and "does not mention it" in text
    assert "reading only: liver" in text and "segmentation only: kidney left" in text
    assert "severity is mild" in text and "high" in text
    assert result["reading"]["organs"] == ["spleen", "liver"]
    assert result["segmentation"]["hemorrhage_ml"] == 130.0
    agree = dict(reading, organs_involved=["spleen", "left kidney"], severity_estimate="severe",
                 bleeding_description="perisplenic hematoma with active extravasation")
    assert reconcile(agree, {"hemorrhage": 130.0, "active_extravasation": 4.0}, organs, "high")["agree"]
    assert not reconcile({"parsed": False}, {}, {}, "none")["compared"]
