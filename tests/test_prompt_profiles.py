"""Prompt profiles of the MedGemma reading (issue 16) on the tiny Gemma 3: the RSNA adapter's
prompt character for character through the processor's chat template, both shipped profiles
end to end in run_series, per-slice replies combined, an adapter's own profile, and bad
profiles stopping start-up with the key named."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from support import tiny_models
from dicom_out.device import Algorithm
from node.cli import main as cli_main
from pipeline import run_series
from pipeline.backends.medgemma_reading import INSTRUCTIONS, SYSTEM
from pipeline.models.imaging import slice_rgb
from pipeline.models.medgemma import Generation, medgemma
from pipeline.prompt_profile import ADAPTER_FILE, ProfileError, choose, combine, named, to_toml
from test_models_pipeline import offline, series  # noqa: F401 - fixtures: offline, the 20-slice phantom

CARD = ("You are a trauma radiologist. Analyze this abdominal CT angiogram slice for hemorrhage and solid "
        "organ injury. Respond in JSON with keys: injury_pattern, organs_involved, bleeding_description, "
        "severity_estimate, differential_diagnosis.")


def reply(severity="none", organs=(), pattern="no traumatic injury", bleeding="no bleeding"):
    return json.dumps({"injury_pattern": pattern, "organs_involved": list(organs),
                       "bleeding_description": bleeding, "severity_estimate": severity,
                       "differential_diagnosis": ["solid-organ injury"]})


def settings_with(profile="auto", adapter=False):
    settings = tiny_models.model_settings(adapter=adapter, reading="medgemma")
    settings.models.medgemma.prompt_profile = profile
    settings.triage.max_slices = 3
    return settings


def run_with(series, monkeypatch, settings, replies=None):
    """run_series with the tiny MedGemma reading; each request goes through the real processor
    and model (4 tokens); replies (if given) stand in for the text, in order."""
    model = medgemma(settings.models)
    calls, real = [], model.generate_locked

    def stand_in(messages, images=(), max_new_tokens=512, adapter=True):
        calls.append((messages, list(images), max_new_tokens))
        generation = real(messages, images, 4, adapter)
        if replies is None:
            return generation
        return Generation(replies[min(len(calls), len(replies)) - 1], 10, 0.01)

    monkeypatch.setattr(model, "generate_locked", stand_in)
    return run_series(series.paths, settings), calls


def test_the_rsna_profile_is_the_cards_prompt_character_for_character(series):
    from transformers import AutoProcessor

    from pipeline.backends.medgemma_reading import conversations
    from pipeline.volume import load_volume

    profile = named("rsna-adapter-v1")
    assert profile.system == "" and profile.layout == "one-slice" and profile.max_new_tokens == 800
    processor = AutoProcessor.from_pretrained(tiny_models.get("medgemma"))
    volume = load_volume(series.paths)

    class Context:  # what conversations reads of a stage context
        pass

    context = Context()
    context.volume = volume
    settings = settings_with("rsna-adapter-v1")
    sent = conversations(context, [12, 7], settings.models, profile)
    assert [slices for slices, _, _ in sent] == [[7], [12]]  # one request per slice
    _, messages, images = sent[0]
    assert messages == [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CARD}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == f"<bos><start_of_turn>user\n<start_of_image>{CARD}<end_of_turn>\n<start_of_turn>model\n"
    decoded = processor.tokenizer.decode(processor(text=prompt, images=[images])["input_ids"][0])
    assert CARD in decoded
    # 2.5D, soft-tissue window: the slice above in red, the slice in green, the one below in blue.
    assert np.array_equal(images[0], np.stack([slice_rgb(volume.hu, k, 50.0, 400.0)[:, :, 0]
                                               for k in (6, 7, 8)], axis=2))
    assert list(profile.slice_indices(20)) == list(range(4, 16))  # the middle 60%
    # The multi-slice profile is the node's prompt as it was.
    assert SYSTEM == ("You are an expert radiologist reading an abdominal trauma CT for a research study. "
                      "Describe only what the images show.")
    assert INSTRUCTIONS.startswith("Assess traumatic injury: hemoperitoneum,") and INSTRUCTIONS.endswith(
        '"severity_estimate": "none" | "mild" | "moderate" | "severe", "differential_diagnosis": [string, ...]}')


@pytest.mark.parametrize("profile", ["multi-slice", "rsna-adapter-v1"])
def test_both_profiles_run_end_to_end(series, monkeypatch, profile):
    settings = settings_with(profile)
    findings, calls = run_with(series, monkeypatch, settings)
    reading = findings.reading
    record = reading["prompt_profile"]
    assert record["name"] == profile and record["source"] == "configured"
    assert record["digest"].startswith("sha256:")
    considered = reading["slices_considered"]
    assert 1 <= len(considered) <= 3 and reading["raw_texts"]
    if profile == "multi-slice":
        assert len(calls) == 2 and len(calls[0][1]) == len(considered)  # one turn, asked again once
        assert calls[0][0][0]["role"] == "system" and calls[0][2] == 24
    else:
        assert [len(images) for _, images, _ in calls] == [1] * len(considered)  # no re-ask
        assert all(m[0]["role"] == "user" and len(m) == 1 for m, _, _ in calls)
        assert {tokens for _, _, tokens in calls} == {800}
        assert all(4 <= k < 16 for k in considered)
        assert [p["index"] for p in reading["per_slice"]] == considered
    # The SEG/SR algorithm identification names the prompt.
    algorithm = Algorithm.of(findings, "trauma-node test", "1")
    assert profile in algorithm.reading_prompt and profile in algorithm.notice()
    ran = algorithm.stage("reading")
    assert algorithm.parameters(ran)["prompt_profile"].startswith(f"{profile} v1 (sha256:")
    items = {i.ManufacturerModelName: i for i in algorithm.contributing_equipment()}
    assert f"prompt profile: {profile}" in items["medgemma"].ContributionDescription


def test_per_slice_replies_combine_as_the_profile_says(series, monkeypatch):
    blush = reply("severe", ["Spleen"], "splenic laceration", "active contrast extravasation from the spleen")
    liver = reply("moderate", ["liver", "spleen"], "liver laceration", "perihepatic hematoma")
    combined = combine([(5, json.loads(reply())), (6, None), (7, json.loads(blush)), (9, json.loads(liver))])
    assert combined["organs_involved"] == ["Spleen", "liver"]  # the union
    assert combined["severity_estimate"] == "severe"  # the highest
    assert combined["extravasation"] == {"any": True, "slices": [7]}
    assert combined["injury_pattern"] == "splenic laceration (slice 7); liver laceration (slice 9)"
    assert "none on slice 5" in combined["slice_disagreements"][0]
    with pytest.raises(ValueError):
        combine([(5, None)])

    # Through the reading: a valid clean slice, an invalid one, one with extravasation.
    settings = settings_with("rsna-adapter-v1")
    findings, calls = run_with(series, monkeypatch, settings, [reply(), "not JSON at all", blush])
    reading = findings.reading
    read = reading["slices_considered"]
    assert len(read) == 3 and len(calls) == 3
    assert reading["source"] == "medgemma" and reading["parsed"]
    assert reading["slices_read_valid"] == [read[0], read[2]]
    assert [p["parsed"] for p in reading["per_slice"]] == [True, False, True]
    assert reading["severity_estimate"] == "severe" and reading["organs_involved"] == ["Spleen"]
    assert reading["extravasation"] == {"any": True, "slices": [read[2]]}
    assert f"slice {read[1]}:" in reading["parse_error"]
    notes = " | ".join(findings.provenance.notes)
    assert "were not valid JSON and were left out" in notes and "disagree on severity" in notes
    assert findings.reconciliation["reading"]["active_extravasation"]

    # No valid slice: the rules reading, labelled.
    findings, _ = run_with(series, monkeypatch, settings, ["nothing", "still nothing"])
    assert findings.reading["source"].startswith("rules-baseline") and not findings.reading["parsed"]


def test_an_adapter_directory_with_a_profile_selects_it(series, monkeypatch, tmp_path, caplog):
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_models.get("lora"), adapter)
    base = settings_with(adapter=True)
    text = to_toml(named("rsna-adapter-v1"), base.models).replace('name = "rsna-adapter-v1"',
                                                                   'name = "site-trained"')
    (adapter / ADAPTER_FILE).write_text(text)
    settings = settings_with(adapter=True)
    settings.models.medgemma.adapter = str(adapter)
    chosen = choose(settings.models.medgemma)
    assert chosen.source == "adapter" and chosen.profile.name == "site-trained"
    assert chosen.profile.layout == "one-slice" and chosen.profile.window_center == 50.0
    with caplog.at_level(logging.INFO, logger="pipeline.backends.medgemma_reading"):
        findings, calls = run_with(series, monkeypatch, settings)
    assert findings.reading["prompt_profile"]["source"] == "adapter"
    assert findings.reading["prompt_profile"]["name"] == "site-trained"
    assert all(len(images) == 1 for _, images, _ in calls)
    assert "reading prompt profile site-trained" in caplog.text and "the adapter's own" in caplog.text
    # Named in the configuration, another profile wins, and the reading says so.
    settings.models.medgemma.prompt_profile = "multi-slice"
    chosen = choose(settings.models.medgemma)
    assert chosen.profile.name == "multi-slice" and "overriding the adapter's own profile site-trained" in \
        chosen.reason()
    # Not used for the reading: the adapter's profile does not apply.
    settings.models.medgemma.prompt_profile = "auto"
    settings.models.medgemma.adapter_in_reading = False
    assert choose(settings.models.medgemma).source == "default"


def write_config(tmp_path, medgemma: str) -> str:
    path = tmp_path / "node.toml"
    path.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n\n[pipeline.models.medgemma]\n{medgemma}\n')
    return str(path)


@pytest.mark.parametrize("table,profile_file,expected", [
    ('prompt_profile = "nope"', None, "pipeline.models.medgemma.prompt_profile = 'nope': no such prompt profile"),
    ('prompt_profile = "bad"', '[messages]\nlayout = "sideways"\ninstruction = "x"\n', "messages.layout"),
    ('prompt_profile = "bad"', 'name = "bad"\n[messages]\nlayout = "one-slice"\ninstruction = "{organ}"\n'
                               '[generation]\nmax_new_tokens = 2\n', "generation.max_new_tokens"),
    ('prompt_profile = "bad"', 'name = "bad"\n[messages\n', "not valid TOML"),
    ('prompt_profile = "bad"', 'name = "bad"\ncolour = 1\n[messages]\nlayout = "one-slice"\ninstruction = "x"\n',
     "colour is not a profile key"),
    ('prompt_profile = "bad"', 'name = "other"\n[messages]\nlayout = "one-slice"\ninstruction = "x"\n',
     "must be the file's name"),
])
def test_a_bad_profile_stops_start_up_naming_the_key(tmp_path, capsys, table, profile_file, expected):
    site = tmp_path / "profiles"
    site.mkdir()
    if profile_file is not None:
        (site / "bad.toml").write_text(profile_file)
    config = write_config(tmp_path, f'{table}\nprompt_profiles_dir = "{site}"')
    assert cli_main(["check-config", "--config", config]) == 2
    assert expected in capsys.readouterr().err


def test_a_site_profile_and_a_bad_adapter_profile(tmp_path, capsys):
    site = tmp_path / "profiles"
    site.mkdir()
    (site / "site-v2.toml").write_text(
        'name = "site-v2"\nversion = "2"\n[messages]\nlayout = "one-slice"\nimage_position = "after"\n'
        'instruction = "Describe this slice as JSON: {schema}"\n[images]\ncontext_slices = 0\n')
    config = write_config(tmp_path, f'prompt_profile = "site-v2"\nprompt_profiles_dir = "{site}"')
    assert cli_main(["check-config", "--config", config]) == 0
    profile = named("site-v2", str(site))
    assert profile.version == "2" and profile.max_new_tokens is None  # the node's setting then
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / ADAPTER_FILE).write_text('name = "x"\n[messages]\nlayout = "one-slice"\ninstruction = "x"\n'
                                        '[images]\nwindow_width = -4\n')
    config = write_config(tmp_path, f'adapter = "{adapter}"')
    assert cli_main(["check-config", "--config", config]) == 2
    err = capsys.readouterr().err
    assert str(adapter / ADAPTER_FILE) in err and "images.window_width" in err
    (site / "multi-slice.toml").write_text('name = "multi-slice"\n[messages]\nlayout = "one-slice"\n'
                                           'instruction = "x"\n')
    with pytest.raises(ProfileError, match="is a shipped profile's name"):
        named("site-v2", str(site))
    with pytest.raises(ProfileError, match="no such directory"):
        named("x", str(tmp_path / "missing"))
