"""A Key Object Selection document (TID 2010) of the key slices in the source CT series.

What IHE AI Results uses for key images: a viewer that supports KOS flags or
lists these slices of the CT itself. Title (113000, DCM, "Of Interest"), the CID
7010 title for images selected as of interest, with the selection described in
a Key Object Description that says it is AI-selected and for research use only.
A series without key slices (no blood, or no label volume) gets no KOS: TID 2010
needs at least one image.
"""

from __future__ import annotations

from typing import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from dicom_out import uids
from dicom_out.device import RESEARCH_USE, Algorithm
from dicom_out.key_slices import KeySlice
from dicom_out.summary_series import instance_uid, series_attributes
from dicom_out.summary_text import tier_text, volume_lines
from pipeline.findings import Findings

TITLE = codes.DCM.OfInterest  # (113000, DCM, "Of Interest"), CID 7010


def build_key_objects(findings: Findings, keys: list[KeySlice], *, series_version: int,
                      algorithm: Algorithm) -> Dataset | None:
    if not keys:
        return None
    images = list({id(key.dataset): key.dataset for key in keys}.values())  # one per instance
    description = (f"{RESEARCH_USE}, AI-selected: the {len(keys)} slices with the most blood and "
                   f"active extravasation, cranial first. " + ". ".join(volume_lines(findings))
                   + f". Risk tier: {tier_text(findings.risk_tier)}. {algorithm.notice()}")
    content = hd.ko.KeyObjectSelection(
        document_title=TITLE, referenced_objects=images, description=description,
        observer_device_context=algorithm.device_observer(uids.device_uid(algorithm.name)))
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=images, content=content,
        sop_instance_uid=instance_uid("KOS", findings, series_version), instance_number=1,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        **series_attributes("KOS", findings, series_version, algorithm))
    _name_frames(kos, keys)
    return kos


def _name_frames(kos: Dataset, keys: Sequence[KeySlice]) -> None:
    """Key slices that are frames of a multi-frame image: its one entry names them."""
    frames: dict[str, list[int]] = {}
    for key in keys:
        if key.frame is not None:
            frames.setdefault(str(key.dataset.SOPInstanceUID), []).append(key.frame)
    for item in kos.ContentSequence:
        if item.ValueType == "IMAGE":
            reference = item.ReferencedSOPSequence[0]
            if reference.ReferencedSOPInstanceUID in frames:
                reference.ReferencedFrameNumber = frames[reference.ReferencedSOPInstanceUID]
