"""The SR's Image Library (TID 1600) for every source image, built fast.

highdicom builds one library entry in ~16 ms and then deep-copies and re-parses
the whole content tree in Comprehensive3DSR (about 14 s for a 300-slice series).
So the SR is built with a one-image library, and the full library is put in
afterwards: highdicom's entry for the first image is the template, and each
other image gets a structural copy of it with its own UIDs and geometry. An
image whose descriptors differ from the template's (another modality, a
missing attribute) gets a highdicom-built entry instead. The tests compare the
result with highdicom's own ImageLibrary item for item.
"""

from __future__ import annotations

from typing import Callable

import highdicom as hd
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.valuerep import DS

Getter = Callable[[Dataset], object]

# NUM descriptors of a cross-sectional image (TID 1601/1602) -> where their value comes from.
_NUMBERS: dict[str, Getter] = {
    codes.DCM.PixelDataRows.value: lambda ds: ds.Rows,
    codes.DCM.PixelDataColumns.value: lambda ds: ds.Columns,
    codes.DCM.HorizontalPixelSpacing.value: lambda ds: ds.PixelSpacing[1],
    codes.DCM.VerticalPixelSpacing.value: lambda ds: ds.PixelSpacing[0],
    codes.DCM.SliceThickness.value: lambda ds: ds.SliceThickness,
    codes.DCM.SpacingBetweenSlices.value: lambda ds: ds.SpacingBetweenSlices,
    **{getattr(codes.DCM, f"ImagePositionPatient{axis}").value:
       (lambda ds, n=n: ds.ImagePositionPatient[n])
       for n, axis in enumerate("XYZ")},
    **{getattr(codes.DCM, f"ImageOrientationPatient{axis}").value:
       (lambda ds, n=n: ds.ImageOrientationPatient[n])
       for n, axis in enumerate(("RowX", "RowY", "RowZ", "ColumnX", "ColumnY", "ColumnZ"))},
}
_UIDREFS: dict[str, Getter] = {
    codes.DCM.FrameOfReferenceUID.value: lambda ds: ds.FrameOfReferenceUID}
_MODALITY = codes.DCM.Modality.value
_CONTENT_SEQUENCE = 0x0040A730
_SHARED = {0x0040A043, 0x004008EA, 0x0040A168}  # Concept Name, Measurement Units, Concept Code Seqs


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
    """Replace the one-entry library group of a TID 1500 SR with entries for all images."""
    group = _library_group(sr)
    template = group.ContentSequence[-1]  # the IMAGE item of images[0]
    entries = [template] + [_entry_like(template, images[0], image) for image in images[1:]]
    # add() rather than attribute assignment: highdicom's items would re-parse every entry.
    group.add(DataElement(_CONTENT_SEQUENCE, "SQ", [*group.ContentSequence[:-1], *entries]))


def _library_group(sr: Dataset) -> Dataset:
    library = [item for item in sr.ContentSequence
               if item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.ImageLibrary.value]
    if len(library) != 1 or len(library[0].ContentSequence) != 1:
        raise ValueError("expected one Image Library with one group, as highdicom builds it")
    return library[0].ContentSequence[0]


def _entry_like(template: Dataset, first: Dataset, image: Dataset) -> Dataset:
    if not _same_descriptors(first, image):
        return _highdicom_entry(image)
    entry = _copy(template)
    reference = entry.ReferencedSOPSequence[0]
    reference.ReferencedSOPClassUID = image.SOPClassUID
    reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
    for item in entry.ContentSequence:
        code = item.ConceptNameCodeSequence[0].CodeValue
        if code in _NUMBERS:
            _set_number(item.MeasuredValueSequence[0], _NUMBERS[code](image))
        elif code in _UIDREFS:
            item.UID = _UIDREFS[code](image)
        elif code != _MODALITY:  # the same for every image of the group
            raise ValueError(f"image library descriptor {code} is not known here")
    return entry


def _same_descriptors(first: Dataset, image: Dataset) -> bool:
    """Whether highdicom would write the same list of descriptors for both images."""
    keywords = ("SOPClassUID", "Modality", "FrameOfReferenceUID", "SpacingBetweenSlices",
                "SliceThickness", "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient")
    return (first.SOPClassUID == image.SOPClassUID
            and first.get("Modality") == image.get("Modality")
            and all((k in first) == (k in image) for k in keywords))


def _set_number(measured: Dataset, value: object) -> None:
    """As highdicom's NumContentItem: DS always, FD too for floating-point values."""
    measured.NumericValue = DS(value, auto_format=True)
    if isinstance(value, float):
        measured.FloatingPointValue = float(value)
    elif "FloatingPointValue" in measured:
        del measured.FloatingPointValue


def _copy(item: Dataset) -> Dataset:
    """New datasets and sequences down to the values patched here; the code
    sequences (concept names, units, the modality) are shared, never modified:
    ~20x faster than deepcopy."""
    out = Dataset()
    for element in item:
        if element.tag in _SHARED:
            out.add(element)
        elif element.VR == "SQ":
            out.add(DataElement(element.tag, "SQ", [_copy(child) for child in element.value]))
        else:
            out.add(DataElement(element.tag, element.VR, element.value))
    return out


def _highdicom_entry(image: Dataset) -> Dataset:
    library = hd.sr.ImageLibrary([image])
    return library[0].ContentSequence[0].ContentSequence[-1]
