"""train-segmentation on phantoms with NIfTI hemorrhage masks: a small-encoder U-Net trained for a
few epochs (Dice + cross-entropy, augmentation, validation Dice per epoch), its checkpoint
recording classes, inputs, window, data and the research-use statement, then loaded by the
`unet` backend inside run_series."""

from __future__ import annotations

import pytest
import torch

from support import tiny_models
from support.datasets_support import write_site
from pipeline import PipelineSettings, run_series
from pipeline.labels import ACTIVE_EXTRAVASATION, CONTAINED_VASCULAR_INJURY, HEMORRHAGE
from pipeline.models import ModelUnavailable
from pipeline.models.unet import Unet
from training.settings import TrainSegmentationSettings
from training.train_segmentation import TrainingError, class_of_label, train_segmentation

SMALL = dict(slices=40, rows=64, cols=64, pixel_spacing=(5.0, 5.0), slice_spacing=5.0)
CLASSES = ["background", "hemorrhage", "active_extravasation"]


def pipeline_settings(checkpoint=""):
    s = PipelineSettings()
    s.models.device = "cpu"
    s.models.unet.encoder = "resnet18"  # lighter than the deployed resnet34, same code path
    s.models.unet.checkpoint = str(checkpoint)
    return s


@pytest.fixture(scope="module")
def site(tmp_path_factory, phantom_factory):
    root = tmp_path_factory.mktemp("seg-site")
    cases = {"S1": (phantom_factory("seg-large", **SMALL, blood="large", blush=True), {"spleen_high": 1}),
             "S2": (phantom_factory("seg-small", **SMALL, blood="small", seed=2), {"liver_low": 1}),
             "S3": (phantom_factory("seg-large-2", **SMALL, blood="large", seed=5), {"spleen_low": 1})}
    write_site(root, cases)
    return root, cases


def test_labels_map_onto_the_backends_classes():
    lut = class_of_label(CLASSES)
    assert lut[0] == 0 and lut[HEMORRHAGE] == 1 and lut[ACTIVE_EXTRAVASATION] == 2
    assert lut[CONTAINED_VASCULAR_INJURY] == 1 and lut[7] == 1  # any other label: blood
    assert class_of_label(["background", "hemorrhage"])[ACTIVE_EXTRAVASATION] == 1


def test_trained_checkpoint_runs_in_the_unet_backend(site, tmp_path):
    root, cases = site
    checkpoint = tmp_path / "unet.pt"
    settings = TrainSegmentationSettings(epochs=2, max_steps=10, batch_size=8, learning_rate=3e-3,
                                         held_out_fraction=0.34, device="cpu")
    said = []
    record = train_segmentation(root, checkpoint, settings, pipeline_settings(), say=said.append)
    text = "\n".join(said)
    assert "memory estimate" in text and "time per step" in text and "validation Dice" in text

    epochs = record["epochs"]
    first, last = epochs[0]["loss"], epochs[-1]["loss"]
    dice = [e["val_dice"]["any_blood"] for e in epochs]
    print(f"loss {first:.3f} -> {last:.3f}; validation Dice (any blood) per epoch {dice}; "
          f"{record['seconds_per_step']:.2f} s per step")
    assert len(epochs) == 2 and record["steps"] == 10 and last < first
    assert all(d is not None for d in dice)

    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["classes"] == CLASSES and saved["encoder"] == "resnet18" and saved["in_channels"] == 3
    assert saved["window"] == [50.0, 400.0] and saved["research_use"].startswith("RESEARCH USE ONLY")
    data = saved["training"]["dataset"]
    assert data["path"] == str(root.resolve()) and data["layout"] == "site"
    assert sorted(s["series_id"] for s in data["train"] + data["held_out"]) == sorted(
        t.spec.series_uid for t, _ in cases.values())

    s = pipeline_settings(checkpoint)
    s.backends.segmentation = "unet"
    tiny_models.lift_plausibility_limits(s)
    findings = run_series(cases["S1"][0].paths, s)
    unet_stage = next(st for st in findings.provenance.stages if st.stage == "segmentation")
    assert unet_stage.backend == "unet"
    assert any("smp U-Net resnet18, 3 slices in, unet.pt" in n for n in findings.provenance.notes)
    assert findings.labels is None or findings.labels.shape == (40, 64, 64)

    # A node whose window differs from the training's refuses the checkpoint.
    other = pipeline_settings(checkpoint)
    other.models.window_width = 350.0
    with pytest.raises(ModelUnavailable, match="window"):
        Unet(other.models)


def test_no_masks_is_a_clear_error(tmp_path, phantom_factory):
    write_site(tmp_path / "site", {"N1": (phantom_factory("seg-large", **SMALL, blood="large", blush=True),
                                          {})}, masks=False)
    with pytest.raises(TrainingError, match="no series with a hemorrhage mask"):
        train_segmentation(tmp_path / "site", tmp_path / "x.pt", TrainSegmentationSettings(device="cpu"),
                           pipeline_settings(), say=lambda _: None)
