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
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Union

if TYPE_CHECKING:
    from node.config import Settings

Buffer = Union[bytes, bytearray, memoryview]

_tmp_names = itertools.count()  # thread-safe in CPython: unique temp names per process
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
# A partial file of another host's process older than this was left by a crash there.
OTHER_HOST_PART_S = 3600.0

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
        # host.pid.n.part: the node's several receiving processes, and nodes on other hosts
        # sharing the data directory, write here at once (clean_incoming).
        self._tmp_prefix = f"{self.tmp}{os.sep}{_HOST}.{os.getpid()}."
        # Series folders known to exist: saves two stat calls and a mkdir per
        # instance. If one is removed behind our back, the rename fails and
        # the folder is made again.
        self._dirs: set[str] = set()
        self._dirs_lock = threading.Lock()

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        parts = (check_uid(study_uid, "Study Instance UID"),
                 check_uid(series_uid, "Series Instance UID"),
                 check_uid(sop_uid, "SOP Instance UID"))
        return f"{parts[0]}/{parts[1]}/{parts[2]}.dcm"

    def path(self, relative: str) -> Path:
        return self.root / relative

    def write(self, relative: str, data: Buffer | Iterable[Buffer]) -> int:
        """Write data (one buffer, or several written one after the other) under
        relative atomically; return the number of bytes."""
        chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
        final = f"{self.root}{os.sep}{relative}"
        parent = os.path.dirname(final)
        new_dirs = [] if parent in self._dirs else self._make_dirs(parent)
        tmp = f"{self._tmp_prefix}{next(_tmp_names)}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     0o666)
        try:
            size = _write_all(fd, chunks)
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        os.close(fd)
        try:
            os.replace(tmp, final)
        except FileNotFoundError:  # the series folder was removed meanwhile
            with self._dirs_lock:
                self._dirs.discard(parent)
            new_dirs = self._make_dirs(parent)
            try:
                os.replace(tmp, final)
            except BaseException:
                _unlink(tmp)
                raise
        if self.fsync:
            # The rename and any new directories must reach the disk too.
            for directory in [Path(parent), *(d.parent for d in new_dirs)]:
                _fsync_dir(directory)
        return size

    def _make_dirs(self, parent: str) -> list[Path]:
        """Make the study and series folders; return those that were new."""
        series_dir = Path(parent)
        new_dirs = [d for d in (series_dir.parent, series_dir) if not d.exists()]
        series_dir.mkdir(parents=True, exist_ok=True)
        with self._dirs_lock:
            self._dirs.add(parent)
        return new_dirs

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def clean_incoming(self) -> int:
        """Remove partial files left by a crash (never acknowledged): this host's of
        processes that no longer run, other hosts' older than OTHER_HOST_PART_S. Those of
        running processes are being written right now."""
        removed = 0
        for part in self.tmp.glob("*.part"):
            host, _, rest = part.name.rpartition(".")[0].rpartition(".")[0].rpartition(".")
            pid = rest if host else part.name.split(".", 1)[0]  # before host names: pid.n
            if host in ("", _HOST):
                stale = not (pid.isdigit() and _running(int(pid)))
            else:
                stale = time.time() - _mtime(part) > OTHER_HOST_PART_S
            if stale:
                part.unlink(missing_ok=True)
                removed += 1
        return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: running
        return True
    return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()


def _write_all(fd: int, chunks: list[Buffer]) -> int:
    """Write every chunk to fd (one writev call when the kernel takes it all)."""
    views = [memoryview(c).cast("B") for c in chunks if len(c)]
    total = sum(len(v) for v in views)
    while views:
        n = os.writev(fd, views)
        while n and views:
            if n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0
    return total


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def results_dir(settings: Settings, study_uid: str, series_uid: str, version: int) -> Path:
    """Where a job's results lie: data/results/<study>/<series>/v<N>/ (node.work.results
    writes them, node.store.retention removes them)."""
    return (settings.data_dir / "results" / check_uid(study_uid, "Study Instance UID")
            / check_uid(series_uid, "Series Instance UID") / f"v{version}")
