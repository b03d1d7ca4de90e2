"""MedSigLIP triage (calibrated score, windowing, batches) and the U-Net segmentation
(checkpoint rules, 2.5D input, triaged slices on the CPU) on tiny models."""

from __future__ import annotations

import numpy as np
import pytest

from support import tiny_models
from pipeline.backends.medsiglip_triage import calibrated_scores, log_mean_exp
from pipeline.backends.unet_segmentation import UnetSegmentation
from pipeline.findings import TriageResult
from pipeline.labels import ACTIVE_EXTRAVASATION, HEMORRHAGE
from pipeline.models import ModelUnavailable
from pipeline.models.imaging import slice_rgb, stack_25d, window_uint8
from pipeline.models.medsiglip import medsiglip
from pipeline.models.unet import Unet
from pipeline.stages import StageContext


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_soft_tissue_window():
    hu = np.array([[-1000, -150, 50, 250, 1000]], dtype=np.int16)
    assert window_uint8(hu, 50, 400).tolist() == [[0, 0, 128, 255, 255]]
    volume = np.stack([np.full((4, 4), v, np.int16) for v in (-150, 50, 250)])
    rgb = slice_rgb(volume, 1, 50, 400)
    assert rgb.shape == (4, 4, 3) and (rgb == 128).all()
    rgb25 = slice_rgb(volume, 1, 50, 400, context=1)
    assert rgb25[0, 0].tolist() == [0, 128, 255]  # above, itself, below
    stack = stack_25d(volume, [0, 2], 50, 400, 1)
    assert stack.shape == (2, 3, 4, 4)
    assert stack[0, :, 0, 0].tolist() == [0.0, 0.0, 0.5]  # clamped at the top edge


def test_calibration_does_not_grow_with_the_number_of_candidates():
    # No signal: every text scores alike. The hackathon's softmax sum of 4 abnormal labels out
    # of 5 gave 0.8 here; the two-class score gives 0.5 whatever the counts.
    flat = np.zeros((3, 5))
    assert np.allclose(calibrated_scores(flat, 4, 1.0, 0.0), 0.5)
    assert np.allclose(calibrated_scores(np.zeros((3, 2)), 1, 1.0, 0.0), 0.5)
    logits = np.array([[2.0, 2.0, 2.0, -1.0], [-3.0, -3.0, -3.0, 1.0]])
    dup = np.array([[2.0, -1.0], [-3.0, 1.0]])
    assert np.allclose(calibrated_scores(logits, 3, 1.0, 0.0), calibrated_scores(dup, 1, 1.0, 0.0))
    scores = calibrated_scores(logits, 3, 1.0, 0.0)
    assert scores[0] == pytest.approx(1 / (1 + np.exp(-3.0))) and scores[1] < 0.05
    # Platt: a bias moves the operating point.
    assert calibrated_scores(flat, 4, 2.0, -1.0)[0] == pytest.approx(1 / (1 + np.e))
    assert log_mean_exp(np.array([[0.0, 0.0]]))[0] == pytest.approx(0.0)


def test_medsiglip_scores_in_batches_alike():
    s = tiny_models.model_settings(triage="medsiglip")
    model = medsiglip(s.models)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(5)]
    texts = s.models.medsiglip.abnormal_texts + s.models.medsiglip.normal_texts
    whole = model.image_text_logits(images, texts, batch_size=32)
    ones = model.image_text_logits(images, texts, batch_size=2)
    assert whole.shape == (5, len(texts))
    assert np.allclose(whole, ones, atol=1e-5)


def test_medsiglip_backend_chooses_in_anatomical_order(monkeypatch):
    from pipeline.backends.medsiglip_triage import MedSiglipTriage

    s = tiny_models.model_settings(triage="medsiglip")
    s.models.medsiglip.threshold = 0.5
    s.triage.max_slices = 3
    hu = np.random.default_rng(1).integers(-200, 300, (8, 32, 32)).astype(np.int16)
    context = StageContext(type("V", (), {"hu": hu})(), s, None, "unknown")
    model = medsiglip(s.models)
    # Stand-in logits with a known ranking: slice k's abnormal margin is known.
    margins = np.array([0.1, 2.0, -1.0, 3.0, 0.0, 1.0, -2.0, 2.5])
    texts = len(s.models.medsiglip.abnormal_texts)

    def fake(images, texts_, batch_size=32):
        start = fake.done
        fake.done += len(images)
        m = margins[start:start + len(images)][:, None]
        return np.concatenate([np.repeat(m, texts, 1), np.zeros((len(images), len(texts_) - texts))], 1)

    fake.done = 0
    monkeypatch.setattr(model, "image_text_logits", fake)
    s.models.medsiglip.batch_size = 3
    result = MedSiglipTriage(s).run(context)
    assert result.chosen == [1, 3, 7]  # the best three above 0.5, cranial first
    assert result.threshold == 0.5 and len(result.scores) == 8
    assert "log-mean-exp" in result.method


def test_unet_refuses_random_weights(monkeypatch, tmp_path):
    s = tiny_models.model_settings(segmentation="unet")
    s.models.unet.checkpoint = ""
    with pytest.raises(ModelUnavailable, match="refuses to run with random weights"):
        Unet(s.models)
    s.models.unet.allow_random_weights = True
    monkeypatch.delenv("PYTEST_CURRENT_TEST")  # outside the tests the flag does nothing
    with pytest.raises(ModelUnavailable, match="random weights"):
        Unet(s.models)
    # An encoder alone (the decoder left at its random start) is refused too.
    partial = tiny_models.build_unet_checkpoint(tmp_path / "encoder-only.pt", drop_decoder=True)
    s.models.unet.checkpoint = str(partial)
    with pytest.raises(ModelUnavailable, match="untrained layers"):
        Unet(s.models)
    other = tiny_models.build_unet_checkpoint(tmp_path / "other.pt", classes=("background", "liver"))
    s.models.unet.checkpoint = str(other)
    with pytest.raises(ModelUnavailable, match="trained with classes"):
        Unet(s.models)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    s.models.unet.checkpoint = str(tmp_path / "junk.pt")
    with pytest.raises(ModelUnavailable, match="not a readable torch checkpoint"):
        Unet(s.models)


def test_unet_segments_triaged_slices_on_the_cpu():
    s = tiny_models.model_settings(segmentation="unet")
    hu = np.random.default_rng(2).integers(-100, 200, (10, 40, 50)).astype(np.int16)  # not multiples of 32
    context = StageContext(type("V", (), {"hu": hu})(), s, None, "unknown")
    context.triage = TriageResult(scores=[0.0] * 10, chosen=[2, 5], threshold=0.5, method="t")
    backend = UnetSegmentation(s)
    labels = backend.run(context)
    assert labels.shape == hu.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, HEMORRHAGE, ACTIVE_EXTRAVASATION}
    untouched = [k for k in range(10) if k not in (2, 5)]
    assert not labels[untouched].any()
    assert any("ran on 2 of 10 slices" in n for n in context.notes)
    # The same slices through the model directly: labels are the class map through the class names.
    from pipeline.models.unet import unet

    model = unet(s.models)
    classes = model.predict(stack_25d(hu, [2, 5], 50, 400, 1))
    assert np.array_equal(labels[[2, 5]], np.array([0, HEMORRHAGE, ACTIVE_EXTRAVASATION], np.uint8)[classes])
    s.models.unet.slices = "all"
    assert backend.slices_to_run(context, "cpu") == list(range(10))
    s.models.unet.slices = "auto"
    assert backend.slices_to_run(context, "cuda") == list(range(10))


def test_out_of_memory_halves_the_batch_and_says_so(monkeypatch):
    import torch

    s = tiny_models.model_settings(segmentation="unet")
    s.models.unet.slices, s.models.unet.batch_size = "all", 8
    hu = np.random.default_rng(3).integers(-100, 200, (7, 32, 32)).astype(np.int16)
    context = StageContext(type("V", (), {"hu": hu})(), s, None, "unknown")
    expected = UnetSegmentation(s).run(context)
    from pipeline.models.unet import unet

    model = unet(s.models)
    real, sizes = model.predict, []

    def small_gpu(batch):
        sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(batch)

    monkeypatch.setattr(model, "predict", small_gpu)
    context.notes = []
    labels = UnetSegmentation(s).run(context)
    assert sizes == [7, 4, 2, 2, 2, 1]
    assert np.array_equal(labels, expected)
    assert any("ran in batches of 2" in n for n in context.notes)
