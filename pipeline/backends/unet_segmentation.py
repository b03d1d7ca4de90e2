"""U-Net segmentation: segmentation-models-pytorch, ResNet34 encoder, 2.5D input.

Each slice goes in with its neighbours as channels (soft-tissue window scaled to
[0, 1]); the output channels are named in ``models.unet.classes``, and those
named hemorrhage or active_extravasation become the labels of
pipeline.labels, so the masks join the same quantification as the embedded
backend. On CUDA every slice is segmented, in batches; on the CPU only the
triaged slices (``slices = "auto"``), and the Findings say so, since blood
outside them is then not counted.
"""

from __future__ import annotations

import numpy as np

from pipeline.labels import ACTIVE_EXTRAVASATION, HEMORRHAGE
from pipeline.models.imaging import stack_25d
from pipeline.models.loading import in_batches
from pipeline.settings import PipelineSettings
from pipeline.stages import StageContext

LABEL_OF_CLASS = {"hemorrhage": HEMORRHAGE, "active_extravasation": ACTIVE_EXTRAVASATION}


class UnetSegmentation:
    name = "unet"
    version = "1.0"
    description = "U-Net (segmentation-models-pytorch), 2.5D input, weights from a checkpoint"

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings

    def slices_to_run(self, context: StageContext, device: str) -> list[int]:
        s = self.settings.models.unet
        count = context.volume.hu.shape[0]
        mode = s.slices if s.slices != "auto" else ("all" if device == "cuda" else "triaged")
        if mode == "all":
            return list(range(count))
        chosen = context.triage.chosen if context.triage is not None else []
        return sorted(chosen)

    def run(self, context: StageContext) -> np.ndarray:
        from pipeline.models.unet import unet

        models = self.settings.models
        s = models.unet
        model = unet(models)
        hu = context.volume.hu
        labels = np.zeros(hu.shape, dtype=np.uint8)
        lut = np.zeros(len(model.classes), dtype=np.uint8)
        for i, name in enumerate(model.classes):
            lut[i] = LABEL_OF_CLASS.get(name, 0)
        indices = self.slices_to_run(context, model.device)

        def segment(batch: list[int]) -> None:
            x = stack_25d(hu, batch, models.window_center, models.window_width, s.context_slices)
            labels[batch] = lut[model.predict(x)]

        in_batches(indices, s.batch_size, segment, context.notes, "segmentation")
        context.notes.append(f"segmentation: {model.describe()}")
        if len(indices) < hu.shape[0]:
            context.notes.append(
                f"segmentation: the U-Net ran on {len(indices)} of {hu.shape[0]} slices (the triaged ones, "
                f"on the {model.device}); blood on other slices is not counted in the volumes")
        if model.random_weights:
            context.notes.append("segmentation: U-Net with RANDOM weights (test run): volumes mean nothing")
        return labels
