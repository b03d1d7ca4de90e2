"""DICOM TLS with certificates made in the test and DCMTK `storescu +tls`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.nodes import FAST, storescu, wait_for
from support.metrics_support import one, scrape


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))


def make_ca(directory: Path, cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / f"{cn}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def make_leaf(directory: Path, cn: str, ca_key, ca_cert) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                           x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / f"{cn}.crt", directory / f"{cn}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return key_path, cert_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert, ca_path = make_ca(d, "hospital-ca")
    rogue_key, rogue_cert, _ = make_ca(d, "rogue-ca")
    return {
        "ca": ca_path,
        "server": make_leaf(d, "trauma-node", ca_key, ca_cert),
        "client": make_leaf(d, "ct-scanner", ca_key, ca_cert),
        "rogue": make_leaf(d, "intruder", rogue_key, rogue_cert),
    }


def tls_config(pki, require: bool = True) -> str:
    key, cert = pki["server"]
    return FAST + f"""
[tls]
enabled = true
certificate = "{cert}"
private_key = "{key}"
ca_certificates = "{pki['ca']}"
require_peer_certificate = {'true' if require else 'false'}
"""


def test_tls_with_client_certificate(node_factory, phantom_factory, pki):
    truth = phantom_factory("tls", slices=12, rows=64, cols=64)
    node = node_factory(tls_config(pki))
    key, cert = pki["client"]
    storescu([truth.paths[0].parent], node.dicom_port,
             extra=["+tls", str(key), str(cert), "+cf", str(pki["ca"])])
    assert node.wait_series_state(truth.spec.series_uid, {"done"})["instances"] == 12
    assert "association accepted: calling 'STORESCU' host 127.0.0.1 tls yes" in node.log()
    assert "(TLS)" in node.log()


def tls_refusals(node) -> tuple[float, list[str]]:
    """The node's count of TLS refusals (/metrics) and its refusal log lines."""
    with httpx.Client(timeout=10) as client:
        count = one(scrape(client, node.url), "trauma_node_associations_rejected_total",
                    reason="tls")
    return count, [line for line in node.log().splitlines() if "connection refused" in line]


def test_tls_refuses_plain_anonymous_and_foreign_clients(node_factory, phantom_factory, pki):
    """Each refused connection is logged once, with its reason, and counted once."""
    truth = phantom_factory("tls", slices=12, rows=64, cols=64)
    node = node_factory(tls_config(pki))
    files = [truth.paths[0]]
    key, cert = pki["rogue"]  # a certificate the hospital CA did not sign
    attempts = [
        ([], "TLS handshake failed"),  # no TLS at all
        (["+tla", "+cf", str(pki["ca"])], "TLS handshake failed"),  # no client certificate
        (["+tls", str(key), str(cert), "+cf", str(pki["ca"])], "TLS handshake failed"),
    ]
    for n, (extra, reason) in enumerate(attempts, start=1):
        assert storescu(files, node.dicom_port, extra=extra, check=False).returncode != 0
        wait_for(lambda: tls_refusals(node)[0] >= n, timeout=10, what="the refusal counted")
        count, lines = tls_refusals(node)
        assert count == n, lines
        assert len(lines) == n and reason in lines[-1], lines
    _, lines = tls_refusals(node)
    assert "WRONG_VERSION_NUMBER" in lines[0] or "HTTP_REQUEST" in lines[0] \
        or "UNEXPECTED" in lines[0], lines[0]  # plain TCP: named as such by OpenSSL
    assert "CERTIFICATE" in lines[1] and "CERTIFICATE" in lines[2], lines
    assert "association accepted" not in node.log()
    assert node.series(truth.spec.series_uid) is None  # nothing was stored


def test_tls_without_required_client_certificate(node_factory, phantom_factory, pki):
    truth = phantom_factory("tls", slices=12, rows=64, cols=64)
    node = node_factory(tls_config(pki, require=False))
    storescu([truth.paths[0]], node.dicom_port, extra=["+tla", "+cf", str(pki["ca"])])
    assert node.wait_series_state(truth.spec.series_uid, {"receiving", "skipped"})
