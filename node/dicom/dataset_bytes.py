"""A received C-STORE data set, read and written without decoding all of it.

The C-STORE handler needs a few header values (UIDs and geometry for the index)
and the encoded bytes for the spool. Decoding the whole data set
(`event.dataset`) and re-encoding the File Meta Information with pydicom
(`event.encoded_dataset()`) cost more than everything else the handler does;
profiled on a 300-slice 512x512 series (bench/ingest.py):
- the header is read up to, not including, the Pixel Data element
  (`stop_before_pixels`), whose length is taken from the element's header,
  and only the elements `extract` and the pixel check use are converted
  (`specific_tags`, see HEADER_TAGS);
- the File Meta Information is encoded here, byte for byte what pynetdicom's
  `Event.encoded_dataset()` writes (preamble, "DICM", group 0002 with the
  request's SOP Class and Instance UIDs, the accepted transfer syntax and
  pynetdicom's implementation UID and version name);
- the data set bytes go to the file from the receive buffer itself, no copy.

Deflated data sets are inflated and decoded by pynetdicom as before.
"""

from __future__ import annotations

import inspect
import re
import struct
from io import BytesIO
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from node.store import headers
from node.store.headers import InstanceHeader, extract

PIXEL_DATA = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF


def _header_tags() -> list[int] | None:
    """The tags of every DICOM keyword quoted or read as an attribute in
    node/store/headers.py and in _native_pixel_bytes.

    Taken from the source, so that a keyword added to `extract` is read
    without anyone having to remember this list; None (read every element)
    if the source cannot be read.
    """
    try:
        source = inspect.getsource(headers) + inspect.getsource(_native_pixel_bytes)
    except (OSError, TypeError):
        return None
    tags = {0x00080005}  # Specific Character Set: decodes the text values
    for word in re.findall(r"(?:[\"']|\.)([A-Z][A-Za-z0-9]+)\b", source):
        tag = tag_for_keyword(word)
        if tag is not None:
            tags.add(tag)
    return sorted(tags)


def _element(elem: int, vr: bytes, value: bytes) -> bytes:
    """One group 0002 element, Explicit VR Little Endian."""
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
        return struct.pack("<HH2s2xI", 0x0002, elem, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value


def _ui(value: Any) -> bytes:
    data = str(value).encode("ascii", "backslashreplace")
    return data + b"\x00" if len(data) % 2 else data


_IMPLEMENTATION = (_element(0x0012, b"UI", _ui(PYNETDICOM_IMPLEMENTATION_UID))
                   + _element(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
                              + (b" " if len(PYNETDICOM_IMPLEMENTATION_VERSION) % 2 else b"")))


def file_meta_prefix(sop_class_uid: Any, sop_instance_uid: Any, transfer_syntax: Any) -> bytes:
    """Preamble, "DICM" and File Meta Information, as Event.encoded_dataset() makes them."""
    body = b"".join((
        _element(0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, b"UI", _ui(sop_class_uid)),
        _element(0x0003, b"UI", _ui(sop_instance_uid)),
        _element(0x0010, b"UI", _ui(transfer_syntax)),
        _IMPLEMENTATION,
    ))
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body


def _native_pixel_bytes(ds: Dataset) -> int | None:
    """The Pixel Data length the header promises, None if it cannot say."""
    try:
        return (int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1)
                * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8)
    except (AttributeError, TypeError, ValueError):
        return None


def pixel_data_problem(ds: Dataset, transfer_syntax: UID) -> str | None:
    """For a fully decoded data set: "missing" (no Pixel Data), "truncated" (less native
    pixel data than promised) or None."""
    if "PixelData" not in ds:
        return "missing"
    if transfer_syntax.is_compressed:
        return None
    expected = _native_pixel_bytes(ds)
    return "truncated" if expected is None or len(ds.PixelData) < expected else None


def read_header(stream: BytesIO, transfer_syntax: UID) -> tuple[InstanceHeader, str | None]:
    """The header values, and what is wrong with the Pixel Data: "missing" (none),
    "truncated" (native, shorter than promised) or None.

    Reads the data set up to the Pixel Data element only. Raises on data that
    cannot be parsed (the caller answers with a failure status).
    """
    pixel: dict[str, Any] = {}

    def at_pixel_data(tag: int, vr: str | None, length: int) -> bool:
        if tag == PIXEL_DATA:
            pixel["vr"], pixel["length"] = vr, length
            return True
        return False

    implicit = transfer_syntax.is_implicit_VR
    stream.seek(0)
    ds = read_dataset(stream, implicit, transfer_syntax.is_little_endian,
                      stop_when=at_pixel_data, specific_tags=HEADER_TAGS)
    header = extract(ds)
    if not pixel:
        return header, "missing"
    truncated = False
    if not transfer_syntax.is_compressed:
        # read_dataset rewound to the start of the Pixel Data element.
        long_form = not implicit and pixel["vr"] in EXPLICIT_VR_LENGTH_32
        value_start = stream.tell() + (12 if long_form else 8)
        total = stream.seek(0, 2)
        declared = pixel["length"]
        available = max(0, total - value_start)
        present = available if declared == _UNDEFINED_LENGTH else min(declared, available)
        expected = _native_pixel_bytes(ds)
        truncated = expected is None or present < expected
    return header, "truncated" if truncated else None


HEADER_TAGS = _header_tags()
