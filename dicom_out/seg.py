"""DICOM Segmentation (BINARY) of the pipeline's findings, built with highdicom."""

from __future__ import annotations

from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from dicom_out import codes, uids
from dicom_out.device import (DEVICE_SERIAL_NUMBER, MANUFACTURER, SEG_SERIES_NUMBER_BASE,
                              Algorithm, series_description, short_text)
from dicom_out.segments import Segment, planned_segments
from dicom_out.source import source_images
from pipeline.findings import Findings

CONTENT_LABEL = "AI_HEMORRHAGE"  # CS, 16 characters at most


def build_seg(findings: Findings, source_datasets: Sequence[Dataset], *, series_version: int,
              algorithm_name: str, algorithm_version: str) -> Dataset:
    """A BINARY SEG in the source study: one segment per finding type present.

    The hemorrhage segment is always there (empty when nothing was found, so the
    viewer shows an explicit negative); active extravasation only when present.
    Empty frames are omitted; every kept frame references its source instance.
    source_datasets may be headers only (stop_before_pixels=True).
    """
    if findings.labels is None:
        raise ValueError("Findings.labels is missing: the SEG needs the label volume")
    algorithm = Algorithm.of(findings, algorithm_name, algorithm_version)
    source = source_images(findings, source_datasets)
    segments = planned_segments(findings)
    series_uid = findings.series["series_instance_uid"]
    # (frames, rows, columns, segments): overlapping segments need the stacked form.
    # Stacked on a new first axis and moved last as a view, so that each segment
    # stays contiguous: highdicom's checks that reduce over the segment axis then
    # take 0.1 s instead of 2 s on a 300-slice series.
    stacked = np.stack([source.reorder(s.mask).view(np.uint8) for s in segments])
    stacked = np.moveaxis(stacked, 0, -1)
    seg = hd.seg.Segmentation(
        source_images=source.datasets,
        pixel_array=stacked,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_description(s, algorithm, series_uid, series_version)
                              for s in segments],
        series_instance_uid=uids.output_uid(series_uid, series_version, uids.SEG_SERIES),
        series_number=SEG_SERIES_NUMBER_BASE + series_version,
        sop_instance_uid=uids.output_uid(series_uid, series_version, uids.SEG_INSTANCE),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number=DEVICE_SERIAL_NUMBER,
        content_label=CONTENT_LABEL,
        content_description=series_description("SEG", series_version),
        series_description=series_description("SEG", series_version),
        omit_empty_frames=True,
    )
    seg.ImageComments = algorithm.notice()  # LT: room for the backend that ran
    for item, segment in zip(seg.SegmentSequence, segments):
        item.SegmentDescription = short_text(f"{segment.finding.description}. {algorithm.notice()}")
    return seg


def _description(segment: Segment, algorithm: Algorithm, series_uid: str,
                 series_version: int) -> hd.seg.SegmentDescription:
    finding = segment.finding
    return hd.seg.SegmentDescription(
        segment_number=segment.number,
        segment_label=finding.label + (" (none detected)" if segment.empty else ""),
        segmented_property_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        segmented_property_type=finding.property_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm.seg_identification(),
        tracking_uid=uids.tracking_uid(series_uid, series_version, finding.key),
        tracking_id=finding.label,
        anatomic_regions=[codes.PERITONEAL_CAVITY],
        display_color=hd.color.CIELabColor.from_rgb(*finding.rgb),
    )
