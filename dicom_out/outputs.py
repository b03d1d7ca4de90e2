"""One call for the node: Findings + source series in, every output object out; or in two
steps, the SEG and SR first (build_seg_and_sr), then what viewers without SEG/SR support
show (add_for_other_viewers), so that the first can be sent while the rest is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from pydicom.dataset import Dataset

from dicom_out.device import Algorithm
from dicom_out.key_objects import build_key_objects
from dicom_out.key_slices import SliceReader, key_slices, read_from_file
from dicom_out.report_pdf import build_report_pdf
from dicom_out.seg import build_seg
from dicom_out.sr import build_sr
from dicom_out.summary_sc import build_summary_sc
from pipeline.findings import Findings

# Every kind of object, in the order they are sent (the SR references the SEG).
KINDS = ("seg", "sr", "sc", "pdf", "kos")
# Kinds made per study, not per series version: "verdict", the readers' verdicts on the AI
# results (dicom_out.verdict_sr), sent by the node once its readers have finished.
STUDY_KINDS = ("verdict",)


@dataclass
class DicomOutputs:
    seg: Dataset | None  # None only when Findings carries no label volume (e.g. from findings.json)
    sr: Dataset
    # For viewers without SEG/SR support:
    sc: list[Dataset] = field(default_factory=list)  # summary page, then the key images
    pdf: Dataset | None = None  # the report as an Encapsulated PDF
    kos: Dataset | None = None  # the key slices of the source series; None without any

    def by_kind(self) -> dict[str, list[Dataset]]:
        """The objects of each kind in KINDS, in order (none of a kind: an empty list)."""
        one = {"seg": self.seg, "sr": self.sr, "pdf": self.pdf, "kos": self.kos}
        return {kind: self.sc if kind == "sc" else [one[kind]] if one[kind] is not None else []
                for kind in KINDS}

    @property
    def datasets(self) -> list[Dataset]:
        """The objects to store or send, SEG first (the SR references it)."""
        return [ds for objects in self.by_kind().values() for ds in objects]


def build_outputs(findings: Findings, source_datasets: Sequence[Dataset], *, series_version: int,
                  algorithm_name: str, algorithm_version: str,
                  previous_sr: Dataset | None = None,
                  read_slice: SliceReader = read_from_file) -> DicomOutputs:
    """The SEG, the TID 1500 SR, the summary SC images, the report PDF and the KOS
    of one series version.

    source_datasets: every instance of the source series, any order; headers are
    enough (pydicom.dcmread(..., stop_before_pixels=True)). The UIDs of all
    objects derive from (source SeriesInstanceUID, series_version), so building
    again gives the same objects and a resend replaces instead of duplicating.
    previous_sr: the SR of the series' last earlier version, if any (its header is
    enough); the new SR names it in PredecessorDocumentsSequence.
    read_slice: the HU of one key slice, for the summary images; by default decoded
    from the file each header was read from, only for the key slices.
    """
    identity = dict(series_version=series_version, algorithm_name=algorithm_name,
                    algorithm_version=algorithm_version)
    seg, sr = build_seg_and_sr(findings, source_datasets, previous_sr=previous_sr, **identity)
    outputs = DicomOutputs(seg=seg, sr=sr)
    add_for_other_viewers(outputs, findings, source_datasets, read_slice=read_slice, **identity)
    return outputs


def build_seg_and_sr(findings: Findings, source_datasets: Sequence[Dataset], *,
                     series_version: int, algorithm_name: str, algorithm_version: str,
                     previous_sr: Dataset | None = None,
                     seg_built: Callable[[Dataset], object] = lambda _: None
                     ) -> tuple[Dataset | None, Dataset]:
    """The SEG (None without a label volume) and the SR: what the trauma team waits for,
    built first so that they can be sent before the rest (build_outputs says the rest).
    seg_built: given the SEG before the SR is built (the node sends it meanwhile)."""
    identity = dict(series_version=series_version, algorithm_name=algorithm_name,
                    algorithm_version=algorithm_version)
    seg = build_seg(findings, source_datasets, **identity) if findings.labels is not None else None
    if seg is not None:
        seg_built(seg)
    return seg, build_sr(findings, source_datasets, seg, previous_sr=previous_sr, **identity)


def add_for_other_viewers(outputs: DicomOutputs, findings: Findings,
                          source_datasets: Sequence[Dataset], *, series_version: int,
                          algorithm_name: str, algorithm_version: str,
                          read_slice: SliceReader = read_from_file) -> None:
    """The summary SC images, the report PDF and the KOS, into outputs (build_outputs)."""
    algorithm = Algorithm.of(findings, algorithm_name, algorithm_version)
    keys = key_slices(findings, source_datasets)
    summary = dict(series_version=series_version, algorithm=algorithm)
    outputs.sc = build_summary_sc(findings, source_datasets, keys, read_slice, **summary)
    outputs.pdf = build_report_pdf(findings, source_datasets, **summary)
    outputs.kos = build_key_objects(findings, keys, **summary)


def warm_up() -> None:
    """Read now the DICOM standard's tables that highdicom reads on its first SEG or SR
    (~0.7 s), so that a long-running worker's first job does not wait for them."""
    from highdicom import _standard_utils  # private: without these loaders, only the first job pays

    for loader in ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map",
                   "get_anatomic_region_map"):
        getattr(_standard_utils, loader, lambda: None)()
