"""Reading a series while it arrives, so that its job starts with the volume decoded.

In a worker process, a watcher looks at the index every workers.poll_interval_s: new
instances of series still receiving, whose SOP class the pipeline analyses, go to a
decoder thread, which reads their headers and decodes their HU (pipeline.volume's one
decoder) into a cache bounded by workers.prefetch_memory_mb (oldest out).

Never in the C-STORE handler: receiving is in another process and only reads the index
and the spool as the worker does anyway. Whatever the cache lacks or no longer matches
(evicted, a later series version, a file replaced or removed by retention, a job claimed
by another worker, an instance row committed after a later one and so not seen, as
PostgreSQL may) is read from the spool by the job, so the volume is always the one
pipeline.volume.load_volume makes.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from sqlalchemy import or_, select

from node.config import Settings
from node.store.database import Index, Instance, Job, JobState, Series, SeriesState
from pipeline.volume import decode_hu, read_header

log = logging.getLogger("trauma_node.prefetch")

HEADER_BYTES = 16 * 1024  # what a header is counted as in the memory bound (CT: a few kB)


def _stamp(path: Path) -> tuple[int, int] | None:
    """Size and modification time: a spool file replaced or removed no longer matches."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


@dataclass
class Decoded:
    """One instance read ahead: its header and its HU as pipeline.volume.decode_hu gives them."""

    series_id: int
    path: Path
    stamp: tuple[int, int]
    header: Dataset
    hu: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.hu.nbytes + HEADER_BYTES


@dataclass
class Taken:
    """What the cache held of a job's instances (the rest is read from the spool)."""

    headers: dict[Path, Dataset] = field(default_factory=dict)
    decoded: dict[Path, np.ndarray] = field(default_factory=dict)


class DecodedCache:
    """Decoded instances by spool path, at most max_bytes of them; the oldest go first."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[Path, Decoded] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, entry: Decoded) -> None:
        if entry.nbytes > self.max_bytes:
            return
        with self._lock:
            self._drop(entry.path)
            while self._entries and self.nbytes + entry.nbytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
            self._entries[entry.path] = entry
            self.nbytes += entry.nbytes

    def take(self, paths: list[Path]) -> Taken:
        """Remove and return the entries of these paths whose file is still the one decoded."""
        taken = Taken()
        with self._lock:
            entries = [self._entries.get(path) for path in paths]
            for entry in filter(None, entries):
                self._drop(entry.path)
        for entry in filter(None, entries):
            if _stamp(entry.path) == entry.stamp:
                taken.headers[entry.path] = entry.header
                taken.decoded[entry.path] = entry.hu
        return taken

    def series(self) -> set[int]:
        with self._lock:
            return {entry.series_id for entry in self._entries.values()}

    def forget(self, series_ids: set[int]) -> None:
        with self._lock:
            for path in [p for p, e in self._entries.items() if e.series_id in series_ids]:
                self._drop(path)

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, path: Path) -> None:
        entry = self._entries.pop(path, None)
        if entry is not None:
            self.nbytes -= entry.nbytes


def decode(series_id: int, path: Path) -> Decoded | None:
    """Header and HU of one spool file; None when it cannot be (the job will say why)."""
    stamp = _stamp(path)
    if stamp is None:
        return None
    try:
        header = read_header(path)
        return Decoded(series_id, path, stamp, header, decode_hu(path, header))
    except Exception as exc:  # noqa: BLE001 - any decoding problem is the job's to report
        log.debug("%s not decoded ahead: %s", path.name, exc)
        return None


class Prefetcher:
    """The watcher and decoder threads of one worker process (see the module's text)."""

    def __init__(self, settings: Settings, index: Index) -> None:
        self.settings, self.index = settings, index
        self.cache = DecodedCache(settings.workers.prefetch_memory_mb * 2**20)
        self._todo: queue.Queue[tuple[int, Path]] = queue.Queue()
        self._claimed: set[Path] = set()  # instances of the job this worker runs: its to read
        self._last_instance = 0
        self.decoded = 0  # instances decoded since the start, for the log
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._watch, name="prefetch-watch", daemon=True),
                         threading.Thread(target=self._decode, name="prefetch-decode", daemon=True)]

    def start(self) -> "Prefetcher":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._todo.put((0, Path()))  # unblocks the decoder
        for thread in self._threads:
            thread.join(timeout=5)

    def take(self, paths: list[Path]) -> Taken:
        """For a claimed job: what is decoded of its paths; the decoder leaves the others
        to the job until release (instances of a later version it goes on decoding)."""
        self._claimed.update(paths)
        return self.cache.take(paths)

    def progress(self) -> str:
        return f"{self.decoded} decoded since start, {self._todo.qsize()} waiting"

    def release(self, paths: list[Path]) -> None:
        self._claimed.difference_update(paths)

    def look(self) -> None:
        """One look at the index: new instances to decode; decoded ones no job will use go."""
        analysed = self.settings.selection.sop_classes
        with self.index.engine.connect() as conn:
            rows = conn.execute(select(Instance.id, Instance.series_id, Instance.path).join(
                Series, Instance.series_id == Series.id).where(
                Instance.id > self._last_instance, Series.state == SeriesState.RECEIVING.value,
                Instance.sop_class_uid.in_(analysed)).order_by(Instance.id)).all()
            cached = self.cache.series()
            useful = set(conn.execute(select(Series.id).where(
                Series.id.in_(cached), _may_serve_a_job())).scalars()) if cached else set()
        self.cache.forget(cached - useful)  # skipped, or analysed
        spool = self.settings.spool_dir
        for row in rows:
            self._last_instance = max(self._last_instance, row.id)
            self._todo.put((row.series_id, spool / row.path))

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.workers.poll_interval_s):
            try:
                self.look()
            except Exception as exc:  # noqa: BLE001 - a busy database: the next look
                log.warning("prefetch: look at the index failed: %s", type(exc).__name__)

    def _decode(self) -> None:
        while not self._stop.is_set():
            series_id, path = self._todo.get()
            if self._stop.is_set():
                return
            if path in self._claimed:
                continue  # its job reads it itself
            entry = decode(series_id, path)
            self.decoded += entry is not None
            if entry is not None and path not in self._claimed:
                self.cache.put(entry)


def _may_serve_a_job():
    """Series whose decoded instances may still serve a job: receiving, or with a job queued
    or running (claimed, and about to take them: this look may fall in between)."""
    waiting = select(Job.series_id).where(Job.state.in_((JobState.QUEUED.value,
                                                          JobState.RUNNING.value)))
    return or_(Series.state == SeriesState.RECEIVING.value, Series.id.in_(waiting))
