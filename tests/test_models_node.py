"""The model backends selected in the node's config, end to end through `trauma-node serve`:
storescu -> MedSigLIP triage -> U-Net -> MedGemma reading (+ LoRA) and report -> SEG + SR,
then a question answered by the same MedGemma over HTTP. Tiny random-weight models of
the real classes, loaded from their directories as real weights would be."""

from __future__ import annotations

import re
from pathlib import Path

import highdicom as hd
import httpx

from support import tiny_models
from support.nodes import FAST, storescu
from support.qa_support import ask

SPEC = dict(slices=20, rows=96, cols=96, pixel_spacing=(4.2, 4.2), slice_spacing=5.0,
            blood="large", blush=True)


def models_config() -> str:
    return FAST + f"""
[pipeline.backends]
triage = "medsiglip"
segmentation = "unet"
reading = "medgemma"
report = "medgemma"
answering = "medgemma"

[pipeline.triage]
max_slices = 4

[pipeline.models]
device = "cpu"

[pipeline.models.medsiglip]
model = "{tiny_models.get('medsiglip')}"
threshold = 0.01

[pipeline.models.medgemma]
model = "{tiny_models.get('medgemma')}"
adapter = "{tiny_models.get('lora')}"
max_new_tokens = 24
report_max_new_tokens = 24

[pipeline.models.unet]
checkpoint = "{tiny_models.get('unet')}"
"""


def test_a_node_configured_with_every_model_backend(node_factory, phantom_factory):
    truth = phantom_factory("models-node", **SPEC)
    node = node_factory(models_config(), env={"HF_HUB_OFFLINE": "1"})
    assert storescu(truth.paths, node.dicom_port).returncode == 0
    series = node.wait_series_state(truth.spec.series_uid, {"done", "skipped", "failed"}, timeout=240)
    assert series["state"] == "done", (series, node.log()[-3000:])

    findings = series["jobs"][-1]["result"]
    stages = {s["stage"]: s["backend"] for s in findings["provenance"]["stages"]}
    assert (stages["triage"], stages["segmentation"], stages["reading"], stages["report"]) == (
        "medsiglip", "unet", "medgemma", "medgemma")
    reading = findings["reading"]
    assert reading["adapter"] is True and "LoRA" in reading["model"]
    assert reading["slices_considered"] == sorted(reading["slices_considered"])
    assert 1 <= len(reading["slices_considered"]) <= 4

    # The SR a radiologist opens names the model backends, not the CPU baseline.
    directory = Path(findings["outputs"]["directory"])
    sr = hd.sr.srread(directory / "sr.dcm")
    texts = [item.TextValue for item in sr.ContentSequence[-1].ContentSequence
             if item.ValueType == "TEXT"]
    full_report = "\n".join(texts)
    assert "medgemma" in full_report.lower() and "medsiglip" in full_report.lower()
    assert "embedded CPU baseline" not in full_report
    assert hd.seg.segread(directory / "seg.dcm").SeriesInstanceUID != truth.spec.series_uid

    # Q&A in the same node: the answer streams from the MedGemma the worker loaded.
    with httpx.Client(timeout=120) as client:
        text, done, events = ask(client, node.url, truth.spec.study_uid, "How much blood is there?")
    assert text.strip() and any(e.event == "token" for e in events)
    # The worker loaded every model at its warm-up, before the first study.
    assert re.search(r"worker \S+ loaded medsiglip: .*unet: .*medgemma: .*\+ LoRA", node.log())
