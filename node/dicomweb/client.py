"""The DICOMweb client of one destination: its URL, auth, TLS verification and timeouts."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient

from node.config import Destination

# The package logs every request at INFO ("store instances ..."), and its retry library a
# traceback at WARNING for each failed one: noise beside our lines, which say what happened.
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
logging.getLogger("retrying").setLevel(logging.ERROR)


class DicomwebUnavailable(RuntimeError):
    """The destination takes nothing now (refused, unreachable, overloaded, no secret): the
    objects not yet sent in this pass wait for the next attempt."""


def _secret(dest: Destination) -> str:
    """The password or token, read at each pass so that a rotated one is picked up."""
    try:
        secret = (Path(dest.secret_file).expanduser().read_text().strip() if dest.secret_file
                  else os.environ.get(dest.secret_env, "").strip())
    except OSError as exc:
        raise DicomwebUnavailable(f"secret_file {dest.secret_file} unreadable "
                                  f"({type(exc).__name__})") from None
    if not secret:
        raise DicomwebUnavailable(f"no {'password' if dest.auth == 'basic' else 'token'} in "
                                  + (f"secret_file {dest.secret_file}" if dest.secret_file
                                     else f"${dest.secret_env}"))
    return secret


class _Session(requests.Session):
    """requests lets $REQUESTS_CA_BUNDLE override a session's CA bundle: the destination's
    own ca_certificates must win. Without one, that variable or the public CAs (certifi)."""

    def __init__(self, ca_certificates: str):
        super().__init__()
        self.ca_certificates = ca_certificates

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if self.ca_certificates:
            settings["verify"] = self.ca_certificates
        return settings


def open_client(dest: Destination, timeout_s: float) -> DICOMwebClient:
    """A client for dest.url; raises DicomwebUnavailable when its secret cannot be read.
    The server's certificate is always verified: a private CA is given, never turned off."""
    session = _Session(str(Path(dest.ca_certificates).expanduser())
                       if dest.ca_certificates else "")
    if dest.auth == "basic":
        session.auth = (dest.username, _secret(dest))
    elif dest.auth == "bearer":
        # requests drops this header on a redirect to another host, as it does basic auth.
        session.headers["Authorization"] = f"Bearer {_secret(dest)}"
    client = DICOMwebClient(dest.url, session=session, timeout=(timeout_s, timeout_s))
    # The outbox retries, with its backoff and dead letters: no hidden waits in here.
    client.set_http_retry_params(retry=False)
    return client
