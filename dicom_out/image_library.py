"""The SR's Image Library (TID 1600) for every source image, built fast and small.

What it holds, and why (PS3.16 TID 1600/1601/1602):
- One Image Library Group with one IMAGE entry (TID 1601) per source image, in
  source order, each with only its Referenced SOP Class and Instance UIDs and
  the concept name highdicom gives it ("Source"). That is what viewers use:
  OHIF lists the library's images from the ReferencedSOPSequence of the group's
  items and ignores everything else.
- The Image Library Entry Descriptors (TID 1602) are optional (U) in TID 1601,
  and TID 1600 lets a group carry them once for all its entries. So the
  descriptors that are the same for every image (Modality, Frame of Reference
  UID, rows and columns, pixel spacing, slice thickness and spacing, image
  orientation) are stated once, at the group level, as highdicom writes them.
  A descriptor whose value differs between images is left out (each image
  carries it), and so is the per-image Image Position (Patient): three NUM items
  of four datasets each per image would triple the library and its encoding
  time, and a reader gets the position from the referenced image itself.

highdicom's own ImageLibrary writes all descriptors in every entry (about 65
datasets per image: ~20,000 nested items for a 300-slice series, which took
3-4 s to build and 2-3 s to write), and Comprehensive3DSR deep-copies and
re-parses the whole content tree. So the SR is built with a one-image library,
and the full library is put in afterwards here, as plain pydicom datasets
(3 per image; 0.05 s to build, ~0.1 s to write for 300 images). The tests
compare the result with highdicom's ImageLibrary (tests/test_dicom_out_library.py).
"""

from __future__ import annotations

from typing import Callable

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

Getter = Callable[[Dataset], object]

# The descriptors (TID 1602) that may be stated once for the group -> the attribute of the
# image they come from, and their value. Image Position (Patient) X/Y/Z is per image: not
# here, never at the group level.
_DESCRIPTORS: dict[str, tuple[str, Getter]] = {
    # highdicom codes the modality from the SOP class
    codes.DCM.Modality.value: ("SOPClassUID", lambda ds: ds.SOPClassUID),
    codes.DCM.FrameOfReferenceUID.value: ("FrameOfReferenceUID",
                                          lambda ds: ds.FrameOfReferenceUID),
    codes.DCM.PixelDataRows.value: ("Rows", lambda ds: ds.Rows),
    codes.DCM.PixelDataColumns.value: ("Columns", lambda ds: ds.Columns),
    codes.DCM.HorizontalPixelSpacing.value: ("PixelSpacing", lambda ds: ds.PixelSpacing[1]),
    codes.DCM.VerticalPixelSpacing.value: ("PixelSpacing", lambda ds: ds.PixelSpacing[0]),
    codes.DCM.SliceThickness.value: ("SliceThickness", lambda ds: ds.SliceThickness),
    codes.DCM.SpacingBetweenSlices.value: ("SpacingBetweenSlices",
                                           lambda ds: ds.SpacingBetweenSlices),
    **{getattr(codes.DCM, f"ImageOrientationPatient{axis}").value:
       ("ImageOrientationPatient", lambda ds, n=n: ds.ImageOrientationPatient[n])
       for n, axis in enumerate(("RowX", "RowY", "RowZ", "ColumnX", "ColumnY", "ColumnZ"))},
}
_CONTENT_SEQUENCE = 0x0040A730
_CONCEPT_NAME = 0x0040A043
_RELATIONSHIP_TYPE = 0x0040A010
_VALUE_TYPE = 0x0040A040
_REFERENCED_SOP_SEQUENCE = 0x00081199
_REFERENCED_SOP_CLASS_UID = 0x00081150
_REFERENCED_SOP_INSTANCE_UID = 0x00081155


def library_header(image: Dataset) -> Dataset:
    """What highdicom's library entry reads, for single- and multi-frame images.

    highdicom reads PixelSpacing, SliceThickness and the plane at the top level,
    where an enhanced (multi-frame) CT has them in its functional groups: they
    are lifted from there (the position of the first frame stands for the image).
    """
    if "PerFrameFunctionalGroupsSequence" not in image:
        return image
    header = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                    "Modality", "FrameOfReferenceUID", "Rows", "Columns"):
        if keyword in image:
            setattr(header, keyword, image[keyword].value)
    shared = image.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    first = image.PerFrameFunctionalGroupsSequence[0]
    for sequence, keywords in (("PixelMeasuresSequence", ("PixelSpacing", "SliceThickness",
                                                          "SpacingBetweenSlices")),
                               ("PlaneOrientationSequence", ("ImageOrientationPatient",)),
                               ("PlanePositionSequence", ("ImagePositionPatient",))):
        groups = [g for g in (first, shared) if sequence in g]
        if groups:
            item = groups[0][sequence][0]
            for keyword in keywords:
                if keyword in item:
                    setattr(header, keyword, item[keyword].value)
    return header


def fill_image_library(sr: Dataset, images: list[Dataset]) -> None:
    """Replace the one-entry library group of a TID 1500 SR with: the descriptors
    common to all images, then one minimal IMAGE entry per image, in order."""
    group = _library_group(sr)
    template = group.ContentSequence[-1]  # highdicom's IMAGE item of images[0]
    heading = list(group.ContentSequence[:-1])  # group-level items highdicom wrote, if any
    present = {_code(item) for item in heading}
    descriptors = [item for item in template.get("ContentSequence", [])
                   if _code(item) not in present and _is_common(item, images)]
    name = template[_CONCEPT_NAME]  # shared by every entry, never modified
    entries = [_entry(name, image) for image in images]
    # add() rather than attribute assignment: highdicom's items would re-parse every entry.
    group.add(DataElement(_CONTENT_SEQUENCE, "SQ", [*heading, *descriptors, *entries]))


def _library_group(sr: Dataset) -> Dataset:
    library = [item for item in sr.ContentSequence if _code(item) == codes.DCM.ImageLibrary.value]
    if len(library) != 1 or len(library[0].ContentSequence) != 1:
        raise ValueError("expected one Image Library with one group, as highdicom builds it")
    group = library[0].ContentSequence[0]
    if group.ContentSequence[-1].ValueType != "IMAGE":
        raise ValueError("expected the group to end with the IMAGE entry of the first image")
    return group


def _code(item: Dataset) -> str:
    return item.ConceptNameCodeSequence[0].CodeValue


def _is_common(descriptor: Dataset, images: list[Dataset]) -> bool:
    """Whether a descriptor of the first image holds, with the same value, for every image."""
    known = _DESCRIPTORS.get(_code(descriptor))
    if known is None:  # a per-image position, or a descriptor not known here: left to the images
        return False
    keyword, getter = known
    try:
        tag = tag_for_keyword(keyword)
        alike = _stored_alike(images[1:], tag) or _values_alike(images[1:], tag)
        first = getter(images[0])
        if alike:
            return len(images) == 1 or getter(images[1]) == first
        return all(getter(image) == first for image in images[1:])
    except (AttributeError, KeyError, IndexError, TypeError):
        return False  # missing in some image


def _stored_alike(images: list[Dataset], tag: int) -> bool:
    """Whether every image holds the attribute as the same bytes, not decoded yet: the
    quick way to tell that their values are equal (decoding and comparing the values
    of 300 headers takes ~0.1 s). False says nothing: the values are compared then."""
    stored = set()
    for image in images:
        element = image.get_item(tag)
        if not isinstance(element, RawDataElement):
            return False
        stored.add((element.value, element.is_little_endian))
        if len(stored) > 1:
            return False
    return True


def _values_alike(images: list[Dataset], tag: int) -> bool:
    """Whether every image holds the attribute with the same value, as headers already read
    for the volume hold it (decoded): one comparison per image, no lookup by keyword.
    False says nothing, as for _stored_alike."""
    first = None
    for image in images:
        element = image.get_item(tag)
        if element is None or isinstance(element, RawDataElement):
            return False
        if first is None:
            first = element
        elif element.value != first.value:
            return False
    return True


def _entry(name: DataElement, image: Dataset) -> Dataset:
    """A TID 1601 entry: CONTAINS IMAGE, as highdicom's ImageContentItem writes it."""
    reference = Dataset()
    reference.add(DataElement(_REFERENCED_SOP_CLASS_UID, "UI", image.SOPClassUID))
    reference.add(DataElement(_REFERENCED_SOP_INSTANCE_UID, "UI", image.SOPInstanceUID))
    entry = Dataset()
    entry.add(DataElement(_REFERENCED_SOP_SEQUENCE, "SQ", [reference]))
    entry.add(DataElement(_RELATIONSHIP_TYPE, "CS", "CONTAINS"))
    entry.add(DataElement(_VALUE_TYPE, "CS", "IMAGE"))
    entry.add(name)
    return entry


