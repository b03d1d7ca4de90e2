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

Most instances never reach pydicom at all (`_plain_header`): in a little endian data
set whose top-level elements up to Pixel Data all have defined lengths, the wanted
values are plain ASCII and the image is not an Enhanced CT, the elements are walked
with struct and converted as pydicom converts them, then handed to the same `extract`.
Anything else (a sequence of undefined length, a value with leading spaces or other
characters, a VR that differs from the dictionary's) is read by pydicom, as before:
tests/test_dataset_bytes_plain.py checks both give the same header.
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
    if transfer_syntax.is_little_endian and not transfer_syntax.is_deflated:
        with stream.getbuffer() as buffer:
            plain = _plain_header(buffer, transfer_syntax.is_implicit_VR,
                                  transfer_syntax.is_compressed)
        if plain is not None:
            return plain
    return read_header_pydicom(stream, transfer_syntax)


def read_header_pydicom(stream: BytesIO, transfer_syntax: UID
                        ) -> tuple[InstanceHeader, str | None]:
    """read_header through pydicom: any data set it can read."""
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


class _Values(dict):
    """Converted values by keyword, read by `extract` as it reads a pydicom Dataset."""

    def __getattr__(self, keyword: str) -> Any:
        try:
            return self[keyword]
        except KeyError:
            raise AttributeError(keyword) from None


class _NotPlain(Exception):
    """Leave this data set to pydicom."""


_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_TEXT_VRS = frozenset({"UI", "CS", "SH", "LO"})
_PLAIN_VRS = _TEXT_VRS | {"DS", "IS", "US"}
_ENHANCED = frozenset({0x52009229, 0x52009230})  # the functional groups: pydicom reads them


def _wanted() -> dict[int, tuple[str, str]]:
    from pydicom.datadict import dictionary_VR, keyword_for_tag

    return {tag: (keyword_for_tag(tag), dictionary_VR(tag)) for tag in HEADER_TAGS or ()}


def _convert(vr: str, raw: bytes) -> Any:
    """A value as pydicom gives it, for values it converts plainly; raises _NotPlain."""
    if vr == "US":
        if len(raw) != 2:
            raise _NotPlain()
        return struct.unpack("<H", raw)[0]
    if (not raw.isascii() or b"\\ " in raw or raw[:1] == b" "
            or b"\x00" in raw and vr != "UI"):
        raise _NotPlain()
    parts = raw.decode("ascii").rstrip("\x00 ").split("\\")
    if vr in _TEXT_VRS:
        if vr == "UI" and len(parts) > 1:
            raise _NotPlain()
        return parts[0] if len(parts) == 1 else [p.rstrip(" ") for p in parts]
    if parts == [""]:
        return None  # an empty DS or IS
    try:
        numbers = [float(p) if vr == "DS" else int(p) for p in parts]
    except ValueError:
        raise _NotPlain() from None
    return numbers[0] if len(numbers) == 1 else numbers


def _plain_header(buffer: memoryview, implicit: bool, compressed: bool
                  ) -> tuple[InstanceHeader, str | None] | None:
    """read_header's answer without pydicom, or None (see the module docstring)."""
    values = _Values()
    pos, end = 0, len(buffer)
    try:
        while pos + 8 <= end:
            group, element = struct.unpack_from("<HH", buffer, pos)
            tag = group << 16 | element
            if implicit:
                vr = None
                length = struct.unpack_from("<L", buffer, pos + 4)[0]
                value_at = pos + 8
            else:
                vr = bytes(buffer[pos + 4:pos + 6])
                if not (vr.isalpha() and vr.isupper()):
                    raise _NotPlain()
                if vr in _LONG_VRS:
                    length = struct.unpack_from("<L", buffer, pos + 8)[0]
                    value_at = pos + 12
                else:
                    length = struct.unpack_from("<H", buffer, pos + 6)[0]
                    value_at = pos + 8
            if tag == PIXEL_DATA:
                present = end - value_at if length == _UNDEFINED_LENGTH else min(
                    length, end - value_at)
                if compressed:
                    return extract(values), None
                expected = _native_pixel_bytes(values)  # type: ignore[arg-type]
                truncated = expected is None or present < expected
                return extract(values), "truncated" if truncated else None
            if length == _UNDEFINED_LENGTH or tag in _ENHANCED or tag < 0x00080000:
                raise _NotPlain()
            known = _WANTED.get(tag)
            if known is not None:
                keyword, dictionary_vr = known
                if (vr is not None and vr.decode("ascii", "replace") != dictionary_vr
                        or dictionary_vr not in _PLAIN_VRS):
                    raise _NotPlain()
                values[keyword] = _convert(dictionary_vr, bytes(buffer[value_at:value_at + length]))
            pos = value_at + length
    except (_NotPlain, struct.error, UnicodeDecodeError):
        return None
    return None  # no Pixel Data, or a data set cut short: pydicom says which


_WANTED = _wanted()
