"""The spool: received instances on disk as spool/<study>/<series>/<sop>.dcm.

An instance is written to a temporary file in the spool's own file system,
optionally fsynced, then renamed into place, so a file under its final name is
always complete. Paths are built only from validated UIDs.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
from pathlib import Path

_tmp_names = itertools.count()  # thread-safe in CPython: unique temp names per process

# DICOM PS3.5 9.1: components of digits separated by dots, at most 64 characters.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
# Some devices emit components with leading zeros; they are still safe as file names.
_LENIENT_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class InvalidUID(ValueError):
    pass


def check_uid(value: object, what: str) -> str:
    """Return value if it is a UID safe to use in a path, else raise InvalidUID."""
    text = str(value) if value is not None else ""
    text = text.rstrip("\x00 ")
    if not text:
        raise InvalidUID(f"{what} is missing")
    if len(text) > 64 or not _LENIENT_UID.match(text):
        shown = text[:70].encode("ascii", "backslashreplace").decode()
        raise InvalidUID(f"{what} is not a valid UID: {shown!r}")
    return text


def is_strict_uid(value: str) -> bool:
    return bool(_UID.match(value)) and len(value) <= 64


class Spool:
    def __init__(self, root: Path, fsync: bool = False):
        self.root = Path(root)
        self.tmp = self.root / ".incoming"
        self.fsync = fsync
        self.tmp.mkdir(parents=True, exist_ok=True)

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        parts = (check_uid(study_uid, "Study Instance UID"),
                 check_uid(series_uid, "Series Instance UID"),
                 check_uid(sop_uid, "SOP Instance UID"))
        return f"{parts[0]}/{parts[1]}/{parts[2]}.dcm"

    def path(self, relative: str) -> Path:
        return self.root / relative

    def write(self, relative: str, data: bytes | memoryview) -> int:
        """Write data under relative atomically; return the number of bytes."""
        final = self.root / relative
        new_dirs = [d for d in (final.parent.parent, final.parent) if not d.exists()]
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp / f"{os.getpid()}.{next(_tmp_names)}.part"
        with open(tmp, "wb") as fh:
            fh.write(data)
            if self.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, final)
        if self.fsync:
            # The rename and any new directories must reach the disk too.
            for directory in [final.parent, *(d.parent for d in new_dirs)]:
                _fsync_dir(directory)
        return len(data)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def clean_incoming(self) -> int:
        """Remove partial files left by a crash (never acknowledged)."""
        removed = 0
        for part in self.tmp.glob("*.part"):
            part.unlink(missing_ok=True)
            removed += 1
        return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
