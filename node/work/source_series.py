"""A job's source instances, each read once.

The headers serve both the volume and the SEG/SR (dicom_out needs them, and reading
300 of them again took a quarter of a second); what the worker decoded while the
series arrived (node.work.prefetch) serves the volume; the key images of the summary
come from the volume instead of being decoded again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset

from dicom_out.key_slices import KeySlice
from node.work.prefetch import Taken
from pipeline.volume import Volume, load_volume, read_header


class SourceSeries:
    def __init__(self, taken: Taken | None = None) -> None:
        taken = taken or Taken()
        self._headers: dict[Path, Dataset] = dict(taken.headers)
        self._decoded = taken.decoded
        self.volume: Volume | None = None

    def load(self, paths: Sequence[Path | str], min_slices: int, gap_tolerance: float) -> Volume:
        """pipeline.run.VolumeLoader: the volume load_volume makes of these files."""
        paths = [Path(p) for p in paths]
        for path in paths:
            if path not in self._headers:
                self._headers[path] = read_header(path)
        decoded, self._decoded = self._decoded, {}  # the volume holds them from now on
        self.volume = load_volume(paths, min_slices, gap_tolerance, headers=self._headers,
                                  decoded=decoded)
        return self.volume

    def headers(self, paths: Sequence[Path]) -> list[Dataset]:
        """The headers of these files (pixel data unread), read now where not yet."""
        return [self._headers.get(path) or read_header(path) for path in paths]

    def key_slice(self, key: KeySlice) -> np.ndarray:
        """dicom_out.key_slices.SliceReader from the volume: the HU the pipeline saw (within
        -1024..3071, which the summary's soft-tissue window never reaches)."""
        if self.volume is None:
            raise ValueError("the volume is not loaded")
        return self.volume.hu[key.index].astype(np.float32)
