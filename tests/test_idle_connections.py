"""Idle or stalled connections, plain and TLS, never keep a legitimate sender out: the TLS
handshake and the association request happen in the connection's own thread, within
network.association_request_timeout_s, before the connection takes an association slot.
Refused connections are logged and counted."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time

import httpx
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from support.nodes import FAST, storescu, wait_for
from support.metrics_support import one, scrape
from test_tls import make_ca, make_leaf, tls_config

REQUEST_TIMEOUT_S = 3.0
IDLE = 20  # more than network.max_associations (16)
QUICK_S = 5.0  # a sender must be through well before the idle ones time out... or soon


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert, ca_path = make_ca(d, "hospital-ca")
    return {"ca": ca_path, "server": make_leaf(d, "trauma-node", ca_key, ca_cert),
            "client": make_leaf(d, "ct-scanner", ca_key, ca_cert)}


@contextlib.contextmanager
def idle_sockets(port: int, partial: int = 0):
    """IDLE connections that send nothing, but the first `partial` that send the first
    bytes of an A-ASSOCIATE-RQ header and stall."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(IDLE)]
    for sock in socks[:partial]:
        sock.sendall(b"\x01\x00\x00")
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def closed_by_node(sock: socket.socket) -> bool:
    sock.settimeout(REQUEST_TIMEOUT_S + 5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def refused(node, reason: str) -> float:
    with httpx.Client(timeout=10) as client:
        return one(scrape(client, node.url), "trauma_node_associations_rejected_total",
                   reason=reason)


def test_idle_plain_connections_leave_the_slots_to_senders(node_factory, phantom_factory):
    truth = phantom_factory("idle-plain", slices=12, rows=64, cols=64)
    node = node_factory(FAST + f"[network]\nassociation_request_timeout_s = {REQUEST_TIMEOUT_S}\n")
    with idle_sockets(node.dicom_port, partial=5) as socks:
        time.sleep(0.5)  # all accepted, waiting for their requests
        started = time.monotonic()
        storescu([truth.paths[0].parent], node.dicom_port)
        assert time.monotonic() - started < QUICK_S
        assert all(closed_by_node(sock) for sock in socks)
    assert node.wait_series_state(truth.spec.series_uid, {"queued", "done"})["instances"] == 12
    # Counted by the receiving process that took each connection, in serve's /metrics
    # within a moment (node.dicom.receivers).
    wait_for(lambda: refused(node, "no_request") == IDLE, 5, what="every refusal counted")
    assert node.log().count(f"no association request within {REQUEST_TIMEOUT_S:g} s") == IDLE


def test_idle_tls_connections_do_not_block_the_handshakes_of_senders(node_factory,
                                                                     phantom_factory, pki):
    truth = phantom_factory("idle-tls", slices=12, rows=64, cols=64)
    node = node_factory(tls_config(pki) + f"[network]\nassociation_request_timeout_s = "
                                          f"{REQUEST_TIMEOUT_S}\n")
    key, cert = pki["client"]
    with idle_sockets(node.dicom_port) as socks:
        time.sleep(0.5)
        started = time.monotonic()
        storescu([truth.paths[0].parent], node.dicom_port,
                 extra=["+tls", str(key), str(cert), "+cf", str(pki["ca"])])
        assert time.monotonic() - started < QUICK_S

        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"]))
        context.check_hostname = False
        context.load_cert_chain(str(cert), str(key))
        ae = AE(ae_title="TLS_SENDER")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        started = time.monotonic()
        assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="TRAUMA_AI",
                             tls_args=(context, None))
        assert assoc.is_established
        statuses = [assoc.send_c_store(pydicom.dcmread(p)).Status for p in truth.paths[:3]]
        assoc.release()
        assert statuses == [0, 0, 0] and time.monotonic() - started < QUICK_S
        assert all(closed_by_node(sock) for sock in socks)
    wait_for(lambda: refused(node, "tls") == IDLE, timeout=10, what="the refusals counted")
    assert node.log().count(f"no TLS handshake within {REQUEST_TIMEOUT_S:g} s") == IDLE
