"""Findings + source series in, DICOM objects out, all for research use only: a
BINARY SEG and a TID 1500 Comprehensive 3D SR, and for viewers without SEG/SR
support summary Secondary Capture images, the report as an Encapsulated PDF and a
Key Object Selection of the key slices.

    from dicom_out import build_outputs
    outputs = build_outputs(findings, source_datasets, series_version=1,
                            algorithm_name="trauma-node", algorithm_version="0.1.0")
    outputs.seg.save_as("seg.dcm"); outputs.sr.save_as("sr.dcm")
    for kind, datasets in outputs.by_kind().items(): ...
"""

from dicom_out.outputs import KINDS, DicomOutputs, build_outputs
from dicom_out.seg import build_seg
from dicom_out.sr import build_sr

__all__ = ["KINDS", "DicomOutputs", "build_outputs", "build_seg", "build_sr"]
