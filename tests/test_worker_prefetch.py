"""Decoding a series while it arrives (node.work.prefetch): the job's volume is the one read
from disk, whatever was decoded ahead, evicted, replaced or added by a later version."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from sqlalchemy import insert, select, update

from node.config import Settings, WorkersSection
from node.store import jobs
from node.store.database import Index, Job, JobState, Series, SeriesState
from node.store.headers import extract
from node.store.receiving import Receiver
from node.store.spool import Spool
from node.store.jobs import ClaimedJob
from node.work.prefetch import DecodedCache, Prefetcher, Taken, decode
from node.work.source_series import SourceSeries
from pipeline.volume import Volume, load_volume
from support.phantom import PhantomSpec, write_enhanced_series, write_series

SMALL = dict(slices=12, rows=64, cols=64, pixel_spacing=(6.0, 6.0), blood="large", blush=True)


def assert_same_volume(got: Volume, expected: Volume) -> None:
    assert got.hu.dtype == expected.hu.dtype
    assert np.array_equal(got.hu, expected.hu)
    assert got.spacing == expected.spacing
    assert got.slices == expected.slices  # order, SOP instances, frames and positions
    assert got.geometry_dict() == expected.geometry_dict()


def decoded_ahead(paths: list[Path], max_bytes: int = 2**30) -> Taken:
    cache = DecodedCache(max_bytes)
    for path in paths:
        entry = decode(1, path)
        assert entry is not None
        cache.put(entry)
    return cache.take(paths)


def volume_with(taken: Taken, paths: list[Path]) -> Volume:
    return SourceSeries(taken).load(paths, 2, 0.5)


@pytest.mark.parametrize("spec", [
    PhantomSpec(**SMALL, order="shuffled", vary_rescale=True),
    PhantomSpec(**SMALL, transfer_syntax=RLELossless),
], ids=["shuffled-varying-rescale", "rle-compressed"])
def test_volume_decoded_ahead_equals_the_one_read_from_disk(tmp_path, spec):
    paths = write_series(spec, tmp_path).paths
    half = paths[::2]  # the rest had not been decoded when the job started
    assert_same_volume(volume_with(decoded_ahead(half), paths), load_volume(paths))
    assert_same_volume(volume_with(decoded_ahead(paths), paths), load_volume(paths))


def test_instances_decoded_ahead_are_not_decoded_again(tmp_path, monkeypatch):
    paths = write_series(PhantomSpec(**SMALL), tmp_path).paths
    taken = decoded_ahead(paths)
    expected = load_volume(paths)

    def no_decoding(path, frames):
        raise AssertionError(f"{path.name} decoded again")

    monkeypatch.setattr("pipeline.volume._decoded_frames", no_decoding)
    assert_same_volume(volume_with(taken, paths), expected)


def test_multi_frame_instance_decoded_ahead(tmp_path):
    paths = write_enhanced_series(PhantomSpec(**SMALL, vary_rescale=True),
                                  tmp_path / "enhanced.dcm").paths
    assert_same_volume(volume_with(decoded_ahead(paths), paths), load_volume(paths))


def test_cache_keeps_within_its_memory_bound_dropping_the_oldest(tmp_path):
    paths = write_series(PhantomSpec(**SMALL), tmp_path).paths
    entries = [decode(1, path) for path in paths[:5]]
    cache = DecodedCache(3 * entries[0].nbytes)
    for entry in entries:
        cache.put(entry)
        assert cache.nbytes <= cache.max_bytes
    taken = cache.take(paths[:5])
    assert sorted(taken.decoded) == sorted(paths[2:5])  # the two oldest went
    assert_same_volume(volume_with(taken, paths), load_volume(paths))


def test_a_file_replaced_after_decoding_is_read_again(tmp_path):
    paths = write_series(PhantomSpec(**SMALL), tmp_path).paths
    cache = DecodedCache(2**30)
    cache.put(decode(1, paths[3]))
    ds = pydicom.dcmread(paths[3])
    ds.RescaleIntercept = -1000  # other HU under the same name
    ds.save_as(paths[3])
    taken = cache.take(paths)
    assert taken.decoded == {}
    volume = volume_with(taken, paths)
    assert_same_volume(volume, load_volume(paths))


@pytest.fixture
def node(tmp_path):
    settings = Settings()
    settings.node.data_dir = str(tmp_path / "data")
    settings.data_dir.mkdir()
    settings.workers = WorkersSection(prefetch_memory_mb=64)
    index = Index(settings.database_url)
    receiver = Receiver(index, Spool(settings.spool_dir))
    yield settings, index, receiver
    index.close()


def receive(receiver: Receiver, paths: list[Path]) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        receiver.store(extract(ds), path.read_bytes(), str(ds.file_meta.TransferSyntaxUID),
                       "CT1", 1)


def job_paths(settings: Settings, index: Index, series_uid: str, version: int) -> list[Path]:
    """The instances of a series version, as the worker lists them for its job."""
    with index.session() as session:
        series = session.execute(select(Series).where(Series.series_uid == series_uid)).scalar_one()
        job = ClaimedJob(0, series.id, series_uid, "", version, 1)
    return [settings.spool_dir / p for p in jobs.instance_paths(index, job)]


def complete(index: Index, series_uid: str, version: int = 1) -> None:
    """As the completion monitor does: the series version is queued, with its job."""
    with index.engine.begin() as conn:
        conn.execute(update(Series).where(Series.series_uid == series_uid).values(
            state=SeriesState.QUEUED.value))
        series_id = conn.execute(select(Series.id).where(Series.series_uid == series_uid)).scalar()
        conn.execute(insert(Job).values(series_id=series_id, series_version=version,
                                        state=JobState.QUEUED.value))


def look_and_decode(prefetcher: Prefetcher) -> None:
    """One look of the watcher, and what the decoder thread does with what it found, here
    in the test's thread."""
    prefetcher.look()
    while not prefetcher._todo.empty():
        series_id, path = prefetcher._todo.get()
        prefetcher.cache.put(decode(series_id, path))


def all_arrived(node, tmp_path):
    """A series received whole, decoded by a prefetcher as it arrived."""
    settings, index, receiver = node
    truth = write_series(PhantomSpec(**SMALL), tmp_path / "sent")
    prefetcher = Prefetcher(settings, index)
    receive(receiver, truth.paths)
    look_and_decode(prefetcher)
    return truth, prefetcher


def test_instances_decoded_while_arriving_serve_each_series_version(tmp_path, node):
    settings, index, receiver = node
    truth = write_series(PhantomSpec(**SMALL), tmp_path / "sent")
    prefetcher = Prefetcher(settings, index)
    receive(receiver, truth.paths[:8])
    look_and_decode(prefetcher)
    assert len(prefetcher.cache) == 8
    complete(index, truth.spec.series_uid)
    receive(receiver, truth.paths[8:])  # after completion: version 2, arriving
    look_and_decode(prefetcher)

    first = job_paths(settings, index, truth.spec.series_uid, 1)
    taken = prefetcher.take(first)
    assert len(first) == 8 and sorted(taken.decoded) == sorted(first)
    assert_same_volume(volume_with(taken, first), load_volume(first))
    prefetcher.release(first)

    second = job_paths(settings, index, truth.spec.series_uid, 2)
    taken = prefetcher.take(second)  # version 1's were taken by its job: read again
    assert sorted(taken.decoded) == sorted(set(second) - set(first))
    assert_same_volume(volume_with(taken, second), load_volume(second))
    assert len(prefetcher.cache) == 0


def test_a_look_between_the_claim_and_the_take_keeps_what_was_decoded(tmp_path, node):
    settings, index, _ = node
    truth, prefetcher = all_arrived(node, tmp_path)
    complete(index, truth.spec.series_uid)
    job = jobs.claim(index, "test/worker-1")
    prefetcher.look()  # the watcher's, while the worker lists the job's instances
    paths = [settings.spool_dir / p for p in jobs.instance_paths(index, job)]
    assert sorted(prefetcher.take(paths).decoded) == sorted(paths)


def test_decoded_instances_no_job_will_use_are_dropped(tmp_path, node):
    _, index, _ = node
    _, prefetcher = all_arrived(node, tmp_path)
    assert len(prefetcher.cache) == SMALL["slices"]
    with index.engine.begin() as conn:  # skipped by the selection: no job will come
        conn.execute(update(Series).values(state=SeriesState.SKIPPED.value))
    prefetcher.look()
    assert len(prefetcher.cache) == 0 and prefetcher.cache.nbytes == 0


def test_other_sop_classes_are_not_decoded(tmp_path, node):
    settings, index, receiver = node
    settings.selection = dataclasses.replace(settings.selection, sop_classes=["1.2.3"])
    truth = write_series(PhantomSpec(**SMALL), tmp_path / "sent")
    receive(receiver, truth.paths)
    prefetcher = Prefetcher(settings, index)
    prefetcher.look()
    assert prefetcher._todo.empty()
