"""The whole pipeline with every model backend (MedSigLIP triage, U-Net segmentation,
MedGemma reading and report with a LoRA adapter) on a DICOM phantom, tiny models loaded
through the same code as the real ones; and the settings as the node reads them."""

from __future__ import annotations

import json

import pytest

from support import tiny_models
from pipeline import run_series
from pipeline.findings import Findings
from pipeline.models.medgemma import Generation, medgemma

EVERY_MODEL = dict(triage="medsiglip", segmentation="unet", reading="medgemma", report="medgemma")
SPEC = dict(slices=20, rows=96, cols=96, pixel_spacing=(4.2, 4.2), slice_spacing=6.0, blood="large",
            blush=True)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def series(phantom_factory):
    return phantom_factory("models-pipeline", **SPEC)


def test_every_model_backend_end_to_end(series):
    settings = tiny_models.model_settings(adapter=True, **EVERY_MODEL)
    settings.models.medsiglip.threshold = 0.01  # random weights: let slices through
    findings = run_series(series.paths, settings)
    document = json.loads(json.dumps(findings.to_json_dict()))
    stages = {s["stage"]: s["backend"] for s in document["provenance"]["stages"]}
    assert stages == {"volume": "pydicom", "anatomy": "hu-anatomy", "triage": "medsiglip",
                      "segmentation": "unet", "quantification": "voxel-count", "reading": "medgemma",
                      "grading": "rule-table", "report": "medgemma"}
    assert "embedded CPU baseline" not in document["provenance"]["backend_summary"]
    triage = document["triage"]
    assert len(triage["scores"]) == SPEC["slices"] and triage["chosen"] == sorted(triage["chosen"])
    assert 1 <= len(triage["chosen"]) <= 6
    reading = document["reading"]
    for key in ("injury_pattern", "organs_involved", "bleeding_description", "severity_estimate",
                "differential_diagnosis", "raw_text", "parsed", "attempts", "slices_sent", "slice_cap"):
        assert key in reading
    assert [s["index"] for s in reading["slices_sent"]] == reading["slices_considered"]
    assert reading["slices_considered"] == sorted(reading["slices_considered"])
    assert reading["adapter"] is True and "LoRA" in reading["model"]
    assert "reconciliation" in document
    assert any("U-Net ran on" in n for n in document["provenance"]["notes"])
    report = document["report"]
    assert report.startswith("RESEARCH USE ONLY") and "NARRATIVE BRIEFING (MedGemma" in report
    assert "adapter on" in report
    back = Findings.from_json_dict(document)
    assert back.reading == document["reading"] and back.reconciliation == document["reconciliation"]
    assert findings.labels.shape == tuple(document["series"]["shape"])


def test_the_report_uses_the_adapter_on_or_off_as_configured(series):
    from pipeline.backends.medgemma_report import MedGemmaReport

    settings = tiny_models.model_settings(adapter=True, report="medgemma")
    findings = run_series(series.paths, settings)
    assert "adapter on" in findings.report
    settings.models.medgemma.adapter_in_report = False
    off = MedGemmaReport(settings).run(findings)
    assert "adapter off" in off

    def narrative(report: str) -> str:
        return report.split("NARRATIVE BRIEFING", 1)[1].split("\n", 1)[1]

    assert narrative(off).strip() and narrative(off) != narrative(findings.report)
    # The measured record above the briefing does not depend on the model.
    assert off.split("NARRATIVE BRIEFING")[0] == findings.report.split("NARRATIVE BRIEFING")[0]


def test_a_parsed_reading_is_reconciled_with_the_segmentation(series, monkeypatch):
    settings = tiny_models.model_settings(reading="medgemma")  # embedded triage and segmentation
    model = medgemma(settings.models)
    reply = ('{"injury_pattern": "no acute injury", "organs_involved": [], "bleeding_description": '
             '"no hemoperitoneum", "severity_estimate": "none", "differential_diagnosis": []}')
    real = model.generate_locked

    def stand_in(messages, images=(), max_new_tokens=512, adapter=True):
        real(messages, images, 4, adapter)
        return Generation(reply, 30, 0.1)

    monkeypatch.setattr(model, "generate_locked", stand_in)
    findings = run_series(series.paths, settings)
    assert findings.reading["parsed"] and findings.reading["source"] == "medgemma"
    assert findings.volumes_ml["hemorrhage"] > 10  # the phantom's blood (within 20 slices)
    rec = findings.reconciliation
    assert rec["compared"] and not rec["agree"]
    assert any("the reading describes none" in d for d in rec["disagreements"])
    # Both kept, and the disagreement is stated where a reader sees it.
    assert findings.reading["bleeding_description"] == "no hemoperitoneum"
    assert any(n.startswith("reading vs segmentation:") for n in findings.provenance.notes)
    assert "reading vs segmentation" in findings.report.lower()


def test_node_config_maps_the_model_tables(tmp_path):
    from node.config import load_settings

    config = tmp_path / "node.toml"
    config.write_text("""
[pipeline.backends]
triage = "medsiglip"
reading = "medgemma"

[pipeline.models]
device = "cpu"

[pipeline.models.medgemma]
model = "/models/medgemma-1.5-4b-it"
adapter = "/models/rsna-lora"
quantization = "4bit"
slice_cap_max = 24

[pipeline.models.medsiglip]
abnormal_texts = ["hemoperitoneum"]
normal_texts = ["normal abdomen"]
threshold = 0.6
""")
    settings = load_settings(config, env={})
    m = settings.pipeline.models
    assert m.medgemma.model == "/models/medgemma-1.5-4b-it" and m.medgemma.slice_cap_max == 24
    assert m.medsiglip.abnormal_texts == ["hemoperitoneum"] and m.medsiglip.threshold == 0.6
    assert settings.pipeline.backends.reading == "medgemma"
    config.write_text('[pipeline.models.medgemma]\nquantization = "3bit"\n')
    with pytest.raises(ValueError, match="quantization must be one of"):
        load_settings(config, env={})


def test_medgemma_answerer_streams_with_history_and_shares_the_model(series):
    from pipeline.answering import Question, Turn
    from pipeline.registry import create_answerer
    from pipeline.backends.medgemma_answering import FOOTER

    settings = tiny_models.model_settings(reading="medgemma", answering="medgemma")
    findings = run_series(series.paths, settings)
    answerer = create_answerer(settings)
    assert answerer.name == "medgemma"
    question = Question("How much blood is there?", findings,
                        history=(Turn("Is the spleen injured?", "Blood beside it."),))
    messages = answerer.messages(question)
    texts = [m["content"][0]["text"] for m in messages]
    assert "volumes_ml" in texts[1] and findings.report.strip() in texts[1]
    assert texts[-3:] == ["Is the spleen injured?", "Blood beside it.", "How much blood is there?"]
    model = medgemma(settings.models)  # the reading stage's model, shared
    pieces = list(answerer.answer(question))
    assert len(pieces) > 1 and pieces[-1] == FOOTER and "".join(pieces[:-1]).strip()
    stream = answerer.answer(question)
    next(stream)
    assert model.lock.locked()  # one generation at a time: the reading would wait
    stream.close()
    assert not model.lock.locked()


def test_with_model_backends_the_workers_share_the_models_with_the_qa(tmp_path):
    """Workers run as threads of `serve` then: one MedGemma in memory, one lock, for
    the pipeline's reading and the Q&A answerer alike."""
    import dataclasses
    import time

    from node.config import Settings
    from node.work.worker import WorkerPool
    from pipeline.models.medgemma import medgemma

    pipeline = tiny_models.model_settings(reading="medgemma", answering="medgemma")
    settings = dataclasses.replace(Settings(), pipeline=pipeline)
    settings.node.data_dir = str(tmp_path / "data")
    settings.data_dir.mkdir(parents=True)
    from node.store import outbox  # noqa: F401  (its table)
    from node.store.database import Index

    index = Index(settings.database_url)
    from pipeline.models import shared

    shared.clear()  # nothing loaded: the worker thread's warm-up must load it
    pool = WorkerPool(settings, index)
    assert pool.in_process
    pool.start()
    try:
        assert pool.threads and all(w.is_alive() for w in pool.threads)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(k[0] == "medgemma" for k in shared.loaded()):
            time.sleep(0.1)
        (key,) = [k for k in shared.loaded() if k[0] == "medgemma"]
        loaded_by_worker = shared.shared(key, lambda: None)
        # What the Q&A answerer asks for in this process is that same object.
        assert loaded_by_worker is not None and medgemma(pipeline.models) is loaded_by_worker
    finally:
        pool.stop(5)
        index.close()
    assert not any(w.is_alive() for w in pool.threads)


def test_embedded_default_workers_are_processes():
    from node.config import Settings
    from node.work.worker import WorkerPool

    assert not WorkerPool(Settings(), index=None).in_process
