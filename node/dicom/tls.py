"""DICOM TLS (PS3.15 Annex B): SSL contexts from the [tls] settings."""

from __future__ import annotations

import ssl

from node.config import TLSSection


def server_context(tls: TLSSection) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.certificate, tls.private_key)
    if tls.ca_certificates:
        context.load_verify_locations(cafile=tls.ca_certificates)
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_peer_certificate else (
        ssl.CERT_OPTIONAL if tls.ca_certificates else ssl.CERT_NONE)
    return context


def client_context(tls: TLSSection) -> ssl.SSLContext:
    """For sending to a destination with tls = true: verify it against our CA bundle
    and present our certificate when we have one."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cafile=tls.ca_certificates or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # PACS certificates name hosts inconsistently; trust comes from the CA bundle.
    context.check_hostname = False
    if tls.certificate and tls.private_key:
        context.load_cert_chain(tls.certificate, tls.private_key)
    return context
