"""C-STORE statuses for bad input and low disk, with the SCP running in this process.

Running the SCP in-process lets a test lower the free disk space in the middle
of an association; everything else goes through the real network stack.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, CTImageStorage
from pynetdicom import AE, _config

from support.nodes import free_port, wait_for
from node.config import load_settings
from node.store.database import Index
from node.metrics import CSTORE_RESPONSES
from node.dicom.policy import AssociationPolicy
from node.store.receiving import Receiver
from node.dicom.scp import StorageSCP
from node.store.spool import InvalidUID, Spool, check_uid

CANNOT_UNDERSTAND = 0xC000
DOES_NOT_MATCH = 0xA900
OUT_OF_RESOURCES = 0xA700


class InProcessNode:
    def __init__(self, tmp: Path):
        self.settings = load_settings("/dev/null", env={}, overrides={
            "node.data_dir": str(tmp / "data"), "node.dicom_port": free_port(),
            "node.dicom_bind": "127.0.0.1"})
        self.free = [10**12]
        self.spool = Spool(self.settings.spool_dir)
        self.index = Index(self.settings.database_url)
        self.receiver = Receiver(self.index, self.spool)
        self.policy = AssociationPolicy("TRAUMA_AI", [], lambda: self.free[0], 2**20)
        self.scp = StorageSCP(self.settings, self.receiver, self.policy)
        self.scp.start()

    def files(self) -> list[Path]:
        return sorted(p for p in self.spool.root.rglob("*.dcm"))

    def instance_count(self) -> int:
        with self.index.engine.connect() as conn:
            return conn.exec_driver_sql("SELECT COUNT(*) FROM instances").scalar()

    def close(self) -> None:
        self.scp.stop(grace_s=2)
        self.index.close()


@pytest.fixture
def scp(tmp_path):
    node = InProcessNode(tmp_path)
    yield node
    node.close()


@pytest.fixture
def assoc(scp, monkeypatch):
    # Files are sent as they are on disk, so a test can send bytes that don't decode.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    a = ae.associate("127.0.0.1", scp.settings.node.dicom_port, ae_title="TRAUMA_AI")
    assert a.is_established
    yield a
    if a.is_established:
        a.release()


def ct_slice(phantom_factory):
    truth = phantom_factory("statuses", slices=4, rows=64, cols=64)
    return [dcmread(p) for p in truth.paths]


def status_of(response) -> int:
    assert response is not None and "Status" in response, "no C-STORE response"
    return int(response.Status)


def test_out_of_resources_mid_association_keeps_what_was_received(scp, assoc, phantom_factory):
    first, second, third, _ = ct_slice(phantom_factory)
    assert status_of(assoc.send_c_store(first)) == 0x0000
    scp.free[0] = 1024  # the disk fills up while the association is open
    response = assoc.send_c_store(second)
    assert status_of(response) == OUT_OF_RESOURCES
    assert "disk space low" in str(response.ErrorComment)
    assert scp.instance_count() == 1 and len(scp.files()) == 1
    scp.free[0] = 10**12  # space freed: the same association goes on
    assert status_of(assoc.send_c_store(third)) == 0x0000
    assert scp.instance_count() == 2


def raw_file(path: Path, dataset_bytes: bytes, sop_uid: str) -> Path:
    """A DICOM file whose body is dataset_bytes, sent by pynetdicom without decoding."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    path.write_bytes(buf.getvalue() + dataset_bytes)
    return path


def test_undecodable_dataset_fails_and_the_node_keeps_serving(scp, assoc, phantom_factory,
                                                              tmp_path):
    good = ct_slice(phantom_factory)[0]
    # An element header that announces 4 GB of value: cannot be parsed.
    garbage = b"\x08\x00\x16\x00UI\x10\x00" + b"1.2.840.10008.5" + b"\x00" + \
        b"\x10\x00\x10\x00PN\xff\xff" + b"\x01" * 20
    bad = raw_file(tmp_path / "bad.dcm", garbage, "1.2.3.4.5")
    assert status_of(assoc.send_c_store(bad)) == CANNOT_UNDERSTAND
    assert status_of(assoc.send_c_store(good)) == 0x0000
    assert scp.instance_count() == 1


def test_truncated_pixel_data_fails(scp, assoc, phantom_factory, tmp_path):
    ds = ct_slice(phantom_factory)[1]
    ds.PixelData = ds.PixelData[:1000]  # header promises 64 x 64 x 2 bytes
    response = assoc.send_c_store(ds)
    assert status_of(response) == CANNOT_UNDERSTAND
    assert "Pixel data shorter" in str(response.ErrorComment)
    assert scp.instance_count() == 0 and scp.files() == []


def test_truncated_file_fails(scp, assoc, phantom_factory, tmp_path):
    ds = ct_slice(phantom_factory)[2]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    cut = tmp_path / "cut.dcm"
    meta_end = 144 + int.from_bytes(buf.getvalue()[140:144], "little")
    raw_file(cut, buf.getvalue()[meta_end:meta_end + 3000], str(ds.SOPInstanceUID))
    assert status_of(assoc.send_c_store(cut)) == CANNOT_UNDERSTAND
    assert scp.instance_count() == 0


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")
@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID"])
@pytest.mark.parametrize("crafted", ["../../../../tmp/evil", "1.2/../../evil", "1.2.3\\..\\x",
                                     "/etc/passwd", "1." + "2" * 80])
def test_crafted_uid_never_writes_outside_the_spool(scp, assoc, phantom_factory, tmp_path,
                                                    keyword, crafted):
    ds = ct_slice(phantom_factory)[3]
    setattr(ds, keyword, crafted)
    response = assoc.send_c_store(ds)
    assert status_of(response) == CANNOT_UNDERSTAND
    assert "not a valid UID" in str(response.ErrorComment)
    assert scp.instance_count() == 0
    outside = [p for p in tmp_path.rglob("*") if p.is_file()
               and scp.settings.data_dir not in p.parents]
    assert outside == []
    assert not Path("/tmp/evil").exists() and not Path("/evil").exists()


@pytest.mark.parametrize("value", ["..", "1..2", ".1", "1.", "1.2.a", "", "1" * 65, "1.2\x00/x"])
def test_uid_validation(value):
    with pytest.raises(InvalidUID):
        check_uid(value, "UID")


def test_valid_uids_pass():
    assert check_uid("1.2.840.10008.5.1.4.1.1.2", "UID") == "1.2.840.10008.5.1.4.1.1.2"
    assert check_uid("1.2.3\x00", "UID") == "1.2.3"  # padding


# -- every instance gets an answer, at once, and the association goes on --------------

PROMPT_S = 2.0  # the sender's DIMSE timeout is 20 s: an answer, not a timeout


def answered(assoc, dataset) -> tuple[int, str, float]:
    started = time.monotonic()
    response = assoc.send_c_store(dataset)
    elapsed = time.monotonic() - started
    return status_of(response), str(response.get("ErrorComment", "")), elapsed


def test_empty_sop_instance_uid_is_answered_cannot_understand(scp, assoc, phantom_factory):
    """pynetdicom drops a C-STORE-RQ without an Affected SOP Instance UID unanswered (the
    sender waited out its DIMSE timeout); node.dicom.acceptor_choice hands it to the handler."""
    first, second, *_ = ct_slice(phantom_factory)
    first.SOPInstanceUID = ""
    status, comment, elapsed = answered(assoc, first)
    assert (status, comment) == (CANNOT_UNDERSTAND, "SOP Instance UID is missing")
    assert elapsed < PROMPT_S
    assert answered(assoc, second)[0] == 0x0000  # the same association goes on
    assert scp.instance_count() == 1


def _undecodable(tmp_path: Path, _: list) -> Path:
    # A sequence of undefined length whose first item is no item: pydicom cannot go on.
    garbage = b"\x08\x00\x16\x00UI\x10\x00" + b"1.2.840.10008.5\x00" + \
        b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\x01" * 30
    return raw_file(tmp_path / "bad.dcm", garbage, "1.2.3.4.5")


def _no_pixel_data(tmp_path: Path, slices: list):
    ds = slices[0]
    del ds.PixelData
    return ds


def _zero_length(tmp_path: Path, _: list) -> Path:
    return raw_file(tmp_path / "empty.dcm", b"", "1.2.3.4.6")


@pytest.mark.parametrize("make, status, comment", [
    (_undecodable, CANNOT_UNDERSTAND, "Cannot understand: dataset cannot be decoded"),
    (_no_pixel_data, DOES_NOT_MATCH, "Data set does not match SOP Class: no Pixel Data"),
    (_zero_length, CANNOT_UNDERSTAND, "Cannot understand: empty data set"),
], ids=["undecodable", "ct-without-pixel-data", "zero-length"])
def test_bad_data_sets_get_their_failure_status_at_once(scp, assoc, phantom_factory, tmp_path,
                                                        make, status, comment):
    slices = ct_slice(phantom_factory)
    got, got_comment, elapsed = answered(assoc, make(tmp_path, slices))
    assert (got, got_comment) == (status, comment)
    assert elapsed < PROMPT_S
    assert answered(assoc, slices[1])[0] == 0x0000
    assert scp.instance_count() == 1 and len(scp.files()) == 1


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")
def test_overlong_sop_instance_uid_in_the_request_is_answered(node_factory, phantom_factory,
                                                             monkeypatch):
    """A request UID pynetdicom cannot take (over 64 characters) made the node's DUL raise
    and abort the association; it is answered Cannot understand instead. Sent to a node in
    its own process: the sending pynetdicom is told to accept the UID."""
    monkeypatch.setitem(_config.VALIDATORS, "UI", lambda value: (True, ""))
    node = node_factory()
    first, second, *_ = ct_slice(phantom_factory)
    first.SOPInstanceUID = "1." + "2" * 80
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    a = ae.associate("127.0.0.1", node.dicom_port, ae_title="TRAUMA_AI")
    assert a.is_established
    status, comment, elapsed = answered(a, first)
    assert status == CANNOT_UNDERSTAND and "SOP Instance UID is not a valid UID" in comment
    assert elapsed < PROMPT_S
    assert answered(a, second)[0] == 0x0000
    a.release()


# -- repeated failures: the first logged, the rest summarised at the end ----------------

def test_repeated_failures_are_summarised_per_association(scp, assoc, phantom_factory, caplog):
    caplog.set_level(logging.INFO, logger="trauma_node.scp")
    slices = ct_slice(phantom_factory)
    repeats = 12
    for i in range(repeats):  # pixel data cut short, each a different instance
        ds = slices[i % 4].copy()
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.1.{i + 1}"
        ds.PixelData = ds.PixelData[:100]
        assert status_of(assoc.send_c_store(ds)) == CANNOT_UNDERSTAND
    scp.free[0] = 1024  # then the disk is full
    for ds in slices * 3:
        assert status_of(assoc.send_c_store(ds)) == OUT_OF_RESOURCES
    assoc.release()
    wait_for(lambda: any("association released" in r.getMessage() for r in caplog.records),
             timeout=10, what="the association's end")
    lines = [r.getMessage() for r in caplog.records if r.name == "trauma_node.scp"]
    truncated = [line for line in lines if "pixel data truncated" in line]
    disk = [line for line in lines if "free disk below" in line]
    assert len(truncated) == 2 and len(disk) == 2, lines
    assert truncated[1].endswith(f"... and {repeats - 1} more like it (association released: "
                                 "calling 'TESTSCU' host 127.0.0.1)")
    assert "... and 11 more like it" in disk[1]
    # The counters behind /metrics count every one.
    counters = scp.scp.counters
    assert counters.value(CSTORE_RESPONSES, "cannot_understand") == repeats
    assert counters.value(CSTORE_RESPONSES, "out_of_resources") == 12
    assert "12 failed" not in " ".join(lines) and f"{repeats + 12} failed" in lines[-1]
