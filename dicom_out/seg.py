"""DICOM Segmentation (BINARY) of the pipeline's findings, built with highdicom."""

from __future__ import annotations

from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.valuerep import format_number_as_ds

from dicom_out import codes, uids
from dicom_out.device import (CONTENT_CREATOR, DEVICE_SERIAL_NUMBER, MANUFACTURER, Algorithm, copy_body_part,
                              output_series_number, series_description, short_text)
from dicom_out.segments import Segment, labelled_slices, planned_segments, segment_map
from dicom_out.source import SourceImages, source_images
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
    series_uid = findings.series["series_instance_uid"]
    picked = _frames_with_labels(findings.labels, source)
    segments = planned_segments(findings)
    if picked is None:
        images = source.datasets
        pixels = source.reorder(segment_map(findings.labels, segments))
    else:
        images = [source.datasets[i] for i in picked]
        pixels = segment_map(findings.labels, segments, slices=source.volume_index[picked])
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_description(s, algorithm, series_uid, series_version)
                              for s in segments],
        series_instance_uid=uids.output_uid(series_uid, series_version, uids.SEG_SERIES),
        series_number=output_series_number("SEG", series_version),
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
        content_creator_name=CONTENT_CREATOR,
        contributing_equipment=algorithm.contributing_equipment(),
    )
    if picked is not None:
        _as_if_given_all(seg, source.datasets)
    seg.ImageComments = algorithm.notice()  # LT: room for the backend that ran
    copy_body_part(seg, source.datasets[0])
    seg.CodingSchemeIdentificationSequence = [codes.ihe_coding_scheme()]  # the Contributing Equipment's
    for item, segment in zip(seg.SegmentSequence, segments):
        item.SegmentDescription = short_text(f"{segment.finding.description}. {algorithm.notice()}")
    return seg


def _frames_with_labels(labels: np.ndarray, source: SourceImages) -> np.ndarray | None:
    """Which single-frame source images highdicom needs to see, in source order; None: all.

    highdicom omits empty frames (omit_empty_frames=True), yet checks, stacks and
    scans every frame it is given, and reads the geometry of every source image
    (~1.2 s for 300 slices of 512x512, where a bleed spans typically a fifth).
    Given only the images whose slice has a label, plus the first image (which
    highdicom takes the patient, study and geometry from), it writes the same
    frames, positions, dimension indices and derivation references; what it
    derives from all the images it is given is put right by _as_if_given_all,
    so that the SEG equals the one built from every image (checked in
    tests/test_dicom_out_objects.py).
    Not for a multi-frame source (one image holds every frame), nor when no
    slice has a label (highdicom then writes every frame, empty).
    """
    if len(source.datasets) != len(source.volume_index):
        return None
    labelled = labelled_slices(labels)[source.volume_index]
    if not labelled.any():
        return None
    labelled[0] = True
    return None if labelled.all() else np.flatnonzero(labelled)


def _as_if_given_all(seg: Dataset, images: Sequence[Dataset]) -> None:
    """What highdicom derives from every source image it is given, as it writes it
    when given them all: the Spacing Between Slices it infers (when the source
    images state none) and the references to the source images."""
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    if "SpacingBetweenSlices" not in images[0]:  # else copied from images[0], given either way
        orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
        spacing, _ = hd.spatial.get_volume_positions(
            image_positions=[image.ImagePositionPatient for image in images],
            image_orientation=orientation.ImageOrientationPatient)
        if spacing is not None:
            measures.SpacingBetweenSlices = format_number_as_ds(spacing)
        elif "SpacingBetweenSlices" in measures:
            del measures.SpacingBetweenSlices
    sources: list[Dataset] = []
    by_series: dict[str, list[Dataset]] = {}
    for image in images:
        reference = Dataset()
        reference.ReferencedSOPClassUID = image.SOPClassUID
        reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
        sources.append(reference)
        by_series.setdefault(image.SeriesInstanceUID, []).append(reference)
    seg.SourceImageSequence = sources
    series = []
    for uid, references in by_series.items():
        item = Dataset()
        item.SeriesInstanceUID = uid
        item.ReferencedInstanceSequence = references
        series.append(item)
    seg.ReferencedSeriesSequence = series


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
