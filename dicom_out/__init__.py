"""Findings + source series in, DICOM objects out: a BINARY SEG and a TID 1500
Comprehensive 3D SR, both for research use only.

    from dicom_out import build_outputs
    outputs = build_outputs(findings, source_datasets, series_version=1,
                            algorithm_name="trauma-node", algorithm_version="0.1.0")
    outputs.seg.save_as("seg.dcm"); outputs.sr.save_as("sr.dcm")
"""

from dicom_out.outputs import DicomOutputs, build_outputs
from dicom_out.seg import build_seg
from dicom_out.sr import build_sr

__all__ = ["DicomOutputs", "build_outputs", "build_seg", "build_sr"]
