"""One call for the node: Findings + source series in, SEG and SR out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from pydicom.dataset import Dataset

from dicom_out.seg import build_seg
from dicom_out.sr import build_sr
from pipeline.findings import Findings


@dataclass
class DicomOutputs:
    seg: Dataset | None  # None only when Findings carries no label volume (e.g. from findings.json)
    sr: Dataset

    @property
    def datasets(self) -> list[Dataset]:
        """The objects to store or send, SEG first (the SR references it)."""
        return [ds for ds in (self.seg, self.sr) if ds is not None]


def build_outputs(findings: Findings, source_datasets: Sequence[Dataset], *, series_version: int,
                  algorithm_name: str, algorithm_version: str,
                  previous_sr: Dataset | None = None) -> DicomOutputs:
    """The SEG and the TID 1500 SR of one series version.

    source_datasets: every instance of the source series, any order; headers are
    enough (pydicom.dcmread(..., stop_before_pixels=True)). The UIDs of both
    objects derive from (source SeriesInstanceUID, series_version), so building
    again gives the same objects and a resend replaces instead of duplicating.
    previous_sr: the SR of the series' last earlier version, if any (its header is
    enough); the new SR names it in PredecessorDocumentsSequence.
    """
    identity = dict(series_version=series_version, algorithm_name=algorithm_name,
                    algorithm_version=algorithm_version)
    seg = build_seg(findings, source_datasets, **identity) if findings.labels is not None else None
    return DicomOutputs(seg=seg, sr=build_sr(findings, source_datasets, seg, previous_sr=previous_sr,
                                             **identity))
