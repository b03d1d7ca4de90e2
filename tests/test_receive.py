"""Receiving: DCMTK and pynetdicom send to the running node; spool, index and jobs are checked."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from support.nodes import DCMTK_ENV, ECHOSCU, FAST, ROOT, storescu, wait_for
from support.postgres import PostgresServer


def spool_file(node, study_uid: str, series_uid: str, sop_uid: str) -> Path:
    return node.data_dir / "spool" / study_uid / series_uid / f"{sop_uid}.dcm"


def processed_slices(series: dict) -> int:
    """How many slices the job of the series' current version analysed (findings.json)."""
    return len(series["jobs"][-1]["result"]["series"]["slices"])


def index_rows(node, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(node.data_dir / "index.sqlite") as db:
        return db.execute(sql, args).fetchall()


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset after the file meta group: what travels over the network."""
    raw = path.read_bytes()
    meta_len = int.from_bytes(raw[140:144], "little")  # (0002,0000) group length
    return raw[144 + meta_len:]


def test_echo_with_dcmtk_and_the_cli(node_factory):
    node = node_factory(FAST)
    r = subprocess.run([ECHOSCU, "-aec", "TRAUMA_AI", "127.0.0.1", str(node.dicom_port)],
                       env=DCMTK_ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    cli = subprocess.run([sys.executable, "-m", "node.cli", "echo", "127.0.0.1",
                          str(node.dicom_port)], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert cli.returncode == 0 and "status 0x0000" in cli.stdout
    assert "association accepted: calling 'ECHOSCU'" in node.log()


@pytest.mark.parametrize("fsync", [False, True])
def test_series_from_storescu_is_stored_indexed_and_processed(node_factory, phantom_factory,
                                                              fsync):
    truth = phantom_factory("plain", slices=300, order="shuffled")
    node = node_factory(FAST + f"fsync = {str(fsync).lower()}\n")  # in [storage]
    storescu([truth.paths[0].parent], node.dicom_port)
    spec = truth.spec
    series = node.wait_series_state(spec.series_uid, {"done"}, timeout=120)
    assert series["instances"] == 300
    assert series["version"] == 1
    # Every instance is in the spool under its UIDs, byte for byte as sent.
    for path, sop in zip(truth.paths, truth.sop_instance_uids):
        stored = spool_file(node, spec.study_uid, spec.series_uid, sop)
        assert dataset_bytes(stored) == dataset_bytes(path)
    rows = index_rows(node, "SELECT COUNT(*), COUNT(DISTINCT sop_instance_uid) FROM instances")
    assert rows == [(300, 300)]
    # The job analysed the whole series with its real geometry.
    assert processed_slices(series) == 300
    assert series["jobs"][-1]["result"]["series"]["spacing_mm"][0] == pytest.approx(
        spec.slice_spacing)
    log = node.log()
    assert "association released: calling 'STORESCU'" in log and "300 stored" in log
    assert f"series {spec.series_uid} v1 complete: 300 instances" in log
    # No patient name or ID in the log.
    assert "PHANTOM" not in log


# storescu's option that proposes each syntax (with the uncompressed ones as fall-back).
PROPOSE = {ImplicitVRLittleEndian: "-xi", ExplicitVRLittleEndian: "-xe", RLELossless: "-xr",
           JPEGLSLossless: "-xt", JPEG2000Lossless: "-xv", JPEGLosslessSV1: "-xs"}


@pytest.mark.parametrize("syntax", list(PROPOSE))
def test_transfer_syntaxes_are_stored_as_received(node_factory, phantom_factory, syntax):
    truth = phantom_factory(f"ts-{syntax}", slices=12, rows=128, cols=128,
                            transfer_syntax=syntax)
    node = node_factory(FAST)
    storescu([truth.paths[0].parent], node.dicom_port, extra=[PROPOSE[syntax]])
    s = node.wait_series_state(truth.spec.series_uid, {"done", "failed"}, timeout=60)
    assert s["instances"] == 12
    stored = spool_file(node, truth.spec.study_uid, truth.spec.series_uid,
                        truth.sop_instance_uids[0])
    assert dataset_bytes(stored) == dataset_bytes(truth.paths[0])
    assert pydicom.dcmread(stored).file_meta.TransferSyntaxUID == syntax
    assert index_rows(node, "SELECT DISTINCT transfer_syntax_uid FROM instances") == [(syntax,)]


def test_enhanced_ct_multiframe_is_received_and_analysed(node_factory, tmp_path):
    from support.phantom import PhantomSpec, write_enhanced_series

    truth = write_enhanced_series(PhantomSpec(slices=24, rows=128, cols=128),
                                  tmp_path / "enhanced" / "ct.dcm")
    node = node_factory(FAST)
    # -R: propose the file's own SOP class (not in storescu's default list).
    storescu(truth.paths, node.dicom_port, extra=["-R"])
    s = node.wait_series_state(truth.spec.series_uid, {"done"}, timeout=60)
    assert s["instances"] == 1 and processed_slices(s) == 24
    stored = spool_file(node, truth.spec.study_uid, truth.spec.series_uid,
                        truth.sop_instance_uids[0])
    assert dataset_bytes(stored) == dataset_bytes(truth.paths[0])


def test_three_senders_at_once(node_factory, phantom_factory):
    truths = [phantom_factory(f"parallel-{i}", slices=30, rows=256, cols=256) for i in range(3)]
    node = node_factory(FAST)
    results: list[subprocess.CompletedProcess] = []
    threads = [threading.Thread(target=lambda t=t: results.append(
        storescu([t.paths[0].parent], node.dicom_port, calling=f"CT{len(results)}", check=False)))
        for t in truths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [r.returncode for r in results] == [0, 0, 0]
    for truth in truths:
        s = node.wait_series_state(truth.spec.series_uid, {"done"}, timeout=60)
        assert s["instances"] == 30 and processed_slices(s) == 30


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_duplicates_are_stored_once_and_late_instances_make_a_new_version(
        node_factory, phantom_factory, database):
    truth = phantom_factory("versions", slices=20, rows=128, cols=128)
    with contextlib.ExitStack() as stack:
        config = FAST
        if database == "postgresql":  # the receive path's statements on a shared database
            pg = stack.enter_context(PostgresServer())
            config = FAST.replace("[storage]\n", f'[storage]\ndatabase_url = "{pg.url}"\n')
        node = node_factory(config)
        _duplicates_then_late_instances(node, truth)
        node.stop()


def _duplicates_then_late_instances(node, truth) -> None:
    first, late = truth.paths[:15], truth.paths[15:]
    storescu(first, node.dicom_port)
    s = node.wait_series_state(truth.spec.series_uid, {"done"}, timeout=60)
    assert s["version"] == 1 and processed_slices(s) == 15
    storescu(first, node.dicom_port)  # the same instances again: nothing new
    wait_for(lambda: node.log().count("association released") >= 2, what="second send")
    s = node.series(truth.spec.series_uid)
    assert s["version"] == 1 and s["instances"] == 15 and len(s["jobs"]) == 1
    assert "15 duplicates" in node.log()
    storescu(late, node.dicom_port)  # the rest arrive after processing: version 2
    s = node.wait_series_state(truth.spec.series_uid, {"done"}, timeout=60)
    wait_for(lambda: len(node.series(truth.spec.series_uid)["jobs"]) == 2, what="second job")
    s = node.wait_series_state(truth.spec.series_uid, {"done"}, timeout=60)
    assert s["version"] == 2 and s["instances"] == 20
    assert [j["series_version"] for j in s["jobs"]] == [1, 2]
    assert processed_slices(s) == 20


def test_other_sop_classes_are_accepted_and_recorded_as_not_analysed(
        node_factory, phantom_factory, tmp_path):
    """A PACS forwarding a whole study: CT images plus an ultrasound image and a dose report."""
    truth = phantom_factory("whole-study", slices=12, rows=64, cols=64)
    other = pydicom.dcmread(pydicom.examples.get_path("rgb_color"))
    other.StudyInstanceUID = truth.spec.study_uid
    dose = dose_report(truth.spec.study_uid)
    paths = [tmp_path / "us.dcm", tmp_path / "dose.dcm"]
    other.save_as(paths[0])
    dose.save_as(paths[1], enforce_file_format=True)
    node = node_factory(FAST)
    storescu([truth.paths[0].parent, *paths], node.dicom_port)
    assert node.wait_series_state(truth.spec.series_uid, {"done"})["instances"] == 12
    us = node.wait_series_state(str(other.SeriesInstanceUID), {"skipped"}, timeout=30)
    assert us["skip_reason"] == "not analysed: SOP class Ultrasound Image Storage"
    sr = node.wait_series_state(str(dose.SeriesInstanceUID), {"skipped"}, timeout=30)
    assert sr["skip_reason"] == "not analysed: SOP class X-Ray Radiation Dose SR Storage"
    assert len(node.studies()) == 1


def dose_report(study_uid: str) -> pydicom.Dataset:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator = "113701", "DCM"
    concept.CodeMeaning = "X-Ray Radiation Dose Report"
    ds.ConceptNameCodeSequence = [concept]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def test_status_command_shows_series_and_skip_reasons(node_factory, phantom_factory):
    truth = phantom_factory("too-few", slices=5, rows=64, cols=64)
    node = node_factory(FAST)
    storescu([truth.paths[0].parent], node.dicom_port)
    node.wait_series_state(truth.spec.series_uid, {"skipped"}, timeout=30)
    out = subprocess.run([sys.executable, "-m", "node.cli", "status", "--config",
                          str(node.config_path), "--data-dir", str(node.data_dir)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if truth.spec.series_uid in l)
    assert "skipped" in line and "5 slices, fewer than the 10 required" in line


def test_send_command_delivers_a_folder(node_factory, phantom_factory):
    truth = phantom_factory("cli-send", slices=12, rows=64, cols=64)
    node = node_factory(FAST)
    out = subprocess.run([sys.executable, "-m", "node.cli", "send", str(truth.paths[0].parent),
                          "--to", f"TRAUMA_AI@127.0.0.1:{node.dicom_port}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "sent 12, failed 0" in out.stdout
    assert node.wait_series_state(truth.spec.series_uid, {"done"})["instances"] == 12
