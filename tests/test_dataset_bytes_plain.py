"""The C-STORE handler's header reader without pydicom (node.dicom.dataset_bytes
`_plain_header`) gives exactly what the pydicom reader gives, and leaves to pydicom
whatever it does not read plainly."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLosslessSV1,
                         RLELossless)

from node.dicom.dataset_bytes import _plain_header, read_header, read_header_pydicom
from support.phantom import PhantomSpec, write_enhanced_series, write_series

SMALL = dict(slices=3, rows=64, cols=64, pixel_spacing=(6.25, 6.25), slice_spacing=5.0)


def _body(path: Path) -> tuple[bytes, UID]:
    """The data set as the C-STORE handler receives it: without preamble and File Meta."""
    ds = pydicom.dcmread(path)
    raw = path.read_bytes()
    meta_length = int.from_bytes(raw[140:144], "little")
    return raw[144 + meta_length:], UID(ds.file_meta.TransferSyntaxUID)


def _both(body: bytes, syntax: UID):
    return read_header(BytesIO(body), syntax), read_header_pydicom(BytesIO(body), syntax)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                    RLELossless, JPEGLosslessSV1])
def test_plain_reading_equals_pydicom_on_phantom_series(tmp_path, syntax):
    truth = write_series(PhantomSpec(**SMALL, transfer_syntax=syntax), tmp_path)
    for path in truth.paths:
        body, found = _body(path)
        assert found == syntax
        assert _plain_header(memoryview(body), found.is_implicit_VR,
                             found.is_compressed) is not None  # the fast path was taken
        plain, through_pydicom = _both(body, found)
        assert plain == through_pydicom
        assert plain[0].rows == 64 and plain[0].images_in_acquisition == 3 and plain[1] is None


def test_an_enhanced_ct_is_read_by_pydicom(tmp_path):
    truth = write_enhanced_series(PhantomSpec(**SMALL), tmp_path / "enhanced.dcm")
    body, syntax = _body(truth.paths[0])
    assert _plain_header(memoryview(body), syntax.is_implicit_VR, syntax.is_compressed) is None
    header, problem = read_header(BytesIO(body), syntax)
    assert header.frames == 3 and len(header.frame_positions) == 3 and problem is None


def _with(path: Path, **values) -> tuple[bytes, UID]:
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    out = path.with_name("edited.dcm")
    ds.save_as(out, enforce_file_format=True)
    return _body(out)


@pytest.mark.parametrize("edit", [
    {"SeriesDescription": "ABDOMEN  "},  # trailing spaces: stripped as pydicom does
    {"SeriesDescription": "Abdomen \u00e9"},  # not ASCII: pydicom decodes it
    {"ImageType": ["ORIGINAL", "PRIMARY", "AXIAL", "HELIX"]},
    {"ConvolutionKernel": ["B30f", "2"]},
    {"ImagesInAcquisition": None},
    {"PixelSpacing": None},
    {"ReferencedImageSequence": [pydicom.Dataset()]},  # a sequence before the wanted values
    {"PixelData": None},  # no Pixel Data: "missing"
])
def test_odd_values_give_the_same_header_either_way(tmp_path, edit):
    truth = write_series(PhantomSpec(**SMALL), tmp_path)
    body, syntax = _with(truth.paths[0], **edit)
    plain, through_pydicom = _both(body, syntax)
    assert plain == through_pydicom


def test_truncated_pixel_data_is_seen_either_way(tmp_path):
    truth = write_series(PhantomSpec(**SMALL), tmp_path)
    body, syntax = _body(truth.paths[0])
    plain, through_pydicom = _both(body[:-100], syntax)
    assert plain == through_pydicom and plain[1] == "truncated"
