"""The SR's fast image library equals the one highdicom builds, entry for entry."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset

from dicom_out.image_library import fill_image_library
from dicom_out.uids import device_uid, output_uid, tracking_uid

SMALL = dict(slices=12, rows=64, cols=64, pixel_spacing=(6.0, 6.0), slice_spacing=5.0)


def _report_library(images: list[Dataset]) -> Dataset:
    """A one-entry TID 1500 library as build_sr makes it, filled with every image."""
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(),
        procedure_reported=hd.sr.CodedConcept("25045-6", "LN", "CT unspecified body region"),
        imaging_measurements=[hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(identifier="x", uid=hd.UID()))],
        referenced_images=images[:1])
    root = report[0]
    fill_image_library(root, images)
    return [item for item in root.ContentSequence
            if item.ConceptNameCodeSequence[0].CodeMeaning == "Image Library"][0]


def _headers(paths: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def test_fast_library_equals_highdicom_library(phantom_factory):
    images = _headers(phantom_factory("dicom_out_library", **SMALL).paths)
    expected = hd.sr.ImageLibrary(images)[0]
    assert _report_library(images).to_json_dict() == expected.to_json_dict()


def test_images_unlike_the_first_get_highdicom_entries(phantom_factory):
    images = _headers(phantom_factory("dicom_out_library", **SMALL).paths)
    images[3].SpacingBetweenSlices = 5.0  # a descriptor the first image does not have
    images[7].PixelSpacing = [0.5, 0.25]  # values differ, descriptors alike: patched
    expected = hd.sr.ImageLibrary(images)[0]
    assert _report_library(images).to_json_dict() == expected.to_json_dict()


def test_output_uids_are_deterministic_and_distinct():
    a = output_uid("1.2.3", 1, "seg/series")
    assert a == output_uid("1.2.3", 1, "seg/series")
    others = {output_uid("1.2.3", 2, "seg/series"), output_uid("1.2.4", 1, "seg/series"),
              output_uid("1.2.3", 1, "seg/instance"), tracking_uid("1.2.3", 1, "hemorrhage")}
    assert a not in others and len(others) == 4
    for uid in (a, *others, device_uid("x")):
        assert uid.startswith("2.25.") and len(uid) <= 64 and pydicom.uid.UID(uid).is_valid
