"""The SR's fast image library: every source image referenced as highdicom's
ImageLibrary references it, in order, and the descriptors common to all images
stated once for the group, as highdicom writes them."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_out.image_library import fill_image_library
from dicom_out.uids import device_uid, output_uid, tracking_uid

SMALL = dict(slices=12, rows=64, cols=64, pixel_spacing=(6.0, 6.0), slice_spacing=5.0)
CONTENT_SEQUENCE = "0040A730"
IMAGE_POSITION = {"110901", "110902", "110903"}  # Image Position (Patient) X, Y, Z: per image
# Modality, Frame of Reference UID, rows, columns, pixel spacing (horizontal, vertical), slice
# thickness, image orientation (6): what every slice of a CT series shares.
SERIES_DESCRIPTORS = {"121139", "112227", "110910", "110911", "111026", "111066", "112225",
                      "110904", "110905", "110906", "110907", "110908", "110909"}


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


def _code(item: Dataset) -> str:
    return item.ConceptNameCodeSequence[0].CodeValue


def _without_descriptors(item: Dataset) -> dict:
    json = item.to_json_dict()
    json.pop(CONTENT_SEQUENCE, None)
    return json


def _check_against_highdicom(images: list[Dataset]) -> set[str]:
    """The fast library against highdicom's: returns the codes of the group descriptors."""
    (expected_group,) = hd.sr.ImageLibrary(images)[0].ContentSequence  # one modality and FoR
    expected_entries = list(expected_group.ContentSequence)
    (group,) = _report_library(images).ContentSequence
    assert group.ConceptNameCodeSequence[0].CodeMeaning == "Image Library Group"
    items = list(group.ContentSequence)
    entries = [i for i in items if i.ValueType == "IMAGE"]
    descriptors = items[:len(items) - len(entries)]  # the group's descriptors, then the entries
    assert entries == items[len(descriptors):]

    # Every image, in order, referenced (SOP class and instance) as highdicom's IMAGE item does.
    assert len(entries) == len(images)
    for entry, expected, image in zip(entries, expected_entries, images):
        assert _without_descriptors(entry) == _without_descriptors(expected)
        reference = entry.ReferencedSOPSequence[0]
        assert reference.ReferencedSOPClassUID == image.SOPClassUID
        assert reference.ReferencedSOPInstanceUID == image.SOPInstanceUID
        assert "ContentSequence" not in entry  # per-image descriptors are left to the images

    # The group states, as highdicom writes them, the descriptors that highdicom writes
    # identically for every image, except the per-image position.
    common = [d.to_json_dict() for d in expected_entries[0].ContentSequence
              if _code(d) not in IMAGE_POSITION
              and all(any(d.to_json_dict() == other.to_json_dict() for other in e.ContentSequence)
                      for e in expected_entries[1:])]
    assert [d.to_json_dict() for d in descriptors] == common
    assert all(d.RelationshipType == "HAS ACQ CONTEXT" for d in descriptors)
    return {_code(d) for d in descriptors}


def _decoded(images: list[Dataset]) -> list[Dataset]:
    """As the node's job hands them over: every value decoded (the volume was read from them)."""
    for image in images:
        list(image)  # iterating converts each raw element
    return images


@pytest.mark.parametrize("prepare", [list, _decoded], ids=["as-read", "values-decoded"])
def test_library_references_every_image_and_states_the_series_descriptors(phantom_factory, prepare):
    images = prepare(_headers(phantom_factory("dicom_out_library", **SMALL).paths))
    assert _check_against_highdicom(images) == SERIES_DESCRIPTORS


@pytest.mark.parametrize("prepare", [list, _decoded], ids=["as-read", "values-decoded"])
def test_descriptors_that_differ_between_images_are_left_out(phantom_factory, prepare):
    images = prepare(_headers(phantom_factory("dicom_out_library", **SMALL).paths))
    images[3].SpacingBetweenSlices = 5.0  # a descriptor the first image does not have
    images[7].PixelSpacing = [0.5, 0.25]  # values differ: not common to the group
    codes = _check_against_highdicom(images)
    assert codes == SERIES_DESCRIPTORS - {"111026", "111066"}


def test_output_uids_are_deterministic_and_distinct():
    a = output_uid("1.2.3", 1, "seg/series")
    assert a == output_uid("1.2.3", 1, "seg/series")
    others = {output_uid("1.2.3", 2, "seg/series"), output_uid("1.2.4", 1, "seg/series"),
              output_uid("1.2.3", 1, "seg/instance"), tracking_uid("1.2.3", 1, "hemorrhage")}
    assert a not in others and len(others) == 4
    for uid in (a, *others, device_uid("x")):
        assert uid.startswith("2.25.") and len(uid) <= 64 and pydicom.uid.UID(uid).is_valid
