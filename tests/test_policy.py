"""Association policy: every refusal gets the proper A-ASSOCIATE-RJ reason and a log line."""

from __future__ import annotations

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from support.nodes import FAST, storescu, wait_for

# (result, source, diagnostic) of PS3.8 Table 9-21
CALLED_AE_NOT_RECOGNIZED = (1, 1, 7)
CALLING_AE_NOT_RECOGNIZED = (1, 1, 3)
TEMPORARY_CONGESTION = (2, 3, 1)
LOCAL_LIMIT_EXCEEDED = (2, 3, 2)


def associate(port: int, called: str = "TRAUMA_AI", calling: str = "PYNETDICOM",
              from_host: str = "127.0.0.1"):
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title=called, bind_address=(from_host, 0))


def rejection(assoc) -> tuple[int, int, int] | None:
    if assoc.is_established:
        assoc.release()
        return None
    assert assoc.is_rejected, "expected an A-ASSOCIATE-RJ, not an abort or timeout"
    p = assoc.acceptor.primitive
    return (p.result, p.result_source, p.diagnostic)


def test_wrong_called_ae_title_is_rejected(node_factory, phantom_factory):
    node = node_factory(FAST)
    assert rejection(associate(node.dicom_port, called="SOMEONE_ELSE")) == CALLED_AE_NOT_RECOGNIZED
    assert "called AE title 'SOMEONE_ELSE' is not ours ('TRAUMA_AI')" in node.log()
    truth = phantom_factory("policy", slices=3, rows=32, cols=32)
    result = storescu([truth.paths[0]], node.dicom_port, called="WRONG", check=False)
    assert result.returncode != 0
    assert rejection(associate(node.dicom_port)) is None  # the right title still works


ALLOWLIST = FAST + """
[[peers]]
ae_title = "CT1"
host = "127.0.0.1"

[[peers]]
ae_title = "*"
host = "127.0.0.4/31"
"""


@pytest.mark.parametrize("calling, host, expected", [
    ("CT1", "127.0.0.1", None),
    ("CT2", "127.0.0.1", CALLING_AE_NOT_RECOGNIZED),  # AE not listed
    ("CT1", "127.0.0.2", CALLING_AE_NOT_RECOGNIZED),  # right AE, wrong host
    ("ANYONE", "127.0.0.5", None),  # any AE from the allowed block
    ("ANYONE", "127.0.0.6", CALLING_AE_NOT_RECOGNIZED),  # outside the block
])
def test_allowlist_of_calling_ae_and_host(node_factory, calling, host, expected):
    node = node_factory(ALLOWLIST)
    assert rejection(associate(node.dicom_port, calling=calling, from_host=host)) == expected
    if expected:
        assert f"calling {calling!r} host {host}: calling AE {calling!r} from {host} is not an " \
               "allowed peer" in node.log()


def test_storescu_from_unknown_ae_is_refused(node_factory, phantom_factory):
    node = node_factory(ALLOWLIST)
    truth = phantom_factory("policy", slices=3, rows=32, cols=32)
    assert storescu([truth.paths[0]], node.dicom_port, calling="INTRUDER", check=False).returncode
    assert storescu([truth.paths[0]], node.dicom_port, calling="CT1").returncode == 0


def test_low_disk_refuses_new_associations(node_factory):
    node = node_factory(FAST.replace("min_free_disk_mb = 10", "min_free_disk_mb = 1000000000"))
    assert rejection(associate(node.dicom_port)) == TEMPORARY_CONGESTION
    assert "free disk below the floor" in node.log()
    assert "free disk is below storage.min_free_disk_mb" in node.log()  # said at start-up too


def test_association_limit(node_factory):
    node = node_factory(FAST + "\n[network]\nmax_associations = 1\n")
    first = associate(node.dicom_port)
    assert first.is_established
    try:
        assert rejection(associate(node.dicom_port)) == LOCAL_LIMIT_EXCEEDED
        wait_for(lambda: "local limit (1 associations)" in node.log(), 10, what="log line")
    finally:
        first.release()
    wait_for(lambda: rejection(associate(node.dicom_port)) is None, 10,
             what="a free association slot")
