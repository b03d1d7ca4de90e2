"""STOW-RS of result objects to a DICOMweb destination, one instance a request, so that each
answer is about one outbox row, as a C-STORE's is.

The answer of each (PS3.18 10.5.3) decides the row's fate: stored (200, or 202 without the
instance among the failed ones); refused for good, so a dead letter at once with the reason
(4xx: bad credentials, no such service, an object the server will not take); refused for
now, so retried with backoff (408, 429, 5xx, or a FailureReason of out of resources or
processing failure, also under 409). A request with no usable answer (timed out or cut
after it went out, a 5xx that a proxy may have sent for a server that stored it) leaves the
row in doubt: node.work.delivery asks the destination (QIDO-RS) before sending it again.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from urllib3.exceptions import NewConnectionError

from node.config import Destination
from node.dicom.scu import BeforeEach, SendReport, collect
from node.dicomweb.client import DicomwebUnavailable, open_client

# Like node.dicom.scu.AfterEach, and permanent: refused for good, retrying cannot help.
AfterEach = Callable[..., None]

DUPLICATE = 0x0111  # Duplicate SOP Instance: the destination holds it already


@dataclass(frozen=True)
class Outcome:
    error: str | None = None  # None: the destination holds it
    permanent: bool = False  # refused for good: a dead letter now
    cut_off: bool = False  # it went out and no usable answer came: it may be there
    stop: bool = False  # the destination takes nothing now: the rest wait too


def send(paths: list[Path], dest: Destination, timeout_s: float,
         before_each: BeforeEach, after_each: AfterEach) -> SendReport:
    """STOW-RS every DICOM file in paths to dest, in order. Files that are not DICOM get
    after_each first. Raises DicomwebUnavailable when the destination takes nothing now
    (after after_each for the file that found out); the files after it get neither."""
    groups, skipped = collect(paths)
    report = SendReport(skipped=skipped)
    for path, why in skipped.items():
        after_each(Path(path), why, False)
    if not groups:
        return report
    client = open_client(dest, timeout_s)
    for path in sorted(p for files in groups.values() for p in files):
        try:
            dataset = dcmread(path)
        except (InvalidDicomError, OSError, ValueError) as exc:  # its header read, not the rest
            report.failed[str(path)] = why = f"unreadable ({type(exc).__name__})"
            after_each(path, why, False)
            continue
        before_each(path)
        outcome = store(client, dataset, dest)
        if outcome.error is None:
            report.sent += 1
        else:
            report.failed[str(path)] = outcome.error
        after_each(path, outcome.error, outcome.cut_off, permanent=outcome.permanent)
        if outcome.stop:
            raise DicomwebUnavailable(outcome.error)
    return report


def store(client, dataset: Dataset, dest: Destination) -> Outcome:
    """One STOW-RS request with one instance, and what its answer means."""
    sop = str(dataset.SOPInstanceUID)
    try:
        answer = client.store_instances([dataset])
    except requests.HTTPError as exc:
        return refused(exc.response, sop, dest)
    except requests.RequestException as exc:
        return unanswered(exc, dest)
    except (ValueError, KeyError) as exc:  # a 2xx whose body does not parse
        return Outcome(f"STOW-RS answer unreadable ({type(exc).__name__}): it may have been "
                       "stored", cut_off=True)
    reason = _failure_reason(answer, sop)
    if reason is None or reason == DUPLICATE:
        return Outcome()
    return _by_reason(reason, f"STOW-RS did not store it: FailureReason 0x{reason:04X}")


def refused(response: requests.Response, sop: str, dest: Destination) -> Outcome:
    code = response.status_code
    reason = _failure_reason(_body(response), sop)
    if reason == DUPLICATE:
        return Outcome()
    what = f"STOW-RS HTTP {code} {response.reason or ''}".rstrip()
    if reason is not None:
        return _by_reason(reason, f"{what}, FailureReason 0x{reason:04X}")
    if code in (401, 403):
        return Outcome(f"{what}: not authorized; check the destination's auth, username and "
                       "secret, then `trauma-node retry`", permanent=True)
    if code == 404:
        return Outcome(f"{what}: no STOW-RS service at {dest.url}/studies; check its url",
                       permanent=True)
    if code in (408, 425, 429):
        return Outcome(f"{what}: busy, retried later", stop=True)
    if code in (501, 505) or 400 <= code < 500:
        return Outcome(f"{what}: refused", permanent=True)
    if code >= 500:  # failed while handling it; a gateway's may hide a server that stored it
        return Outcome(f"{what}: server failed; it may have been stored", cut_off=True,
                       stop=True)
    return Outcome(f"{what}: unexpected answer, retried later", stop=True)


def unanswered(exc: requests.RequestException, dest: Destination) -> Outcome:
    """No HTTP answer. Cut off unless it never left: no connection, or TLS refused it."""
    if isinstance(exc, requests.exceptions.SSLError):
        return Outcome(f"TLS with {dest.url} failed: {_tls_reason(exc)} (ca_certificates: "
                       f"{dest.ca_certificates or 'none, the public CAs'})", stop=True)
    never_sent = isinstance(exc, requests.exceptions.ConnectTimeout) or isinstance(
        getattr(exc.args[0] if exc.args else None, "reason", None), NewConnectionError)
    if never_sent:
        return Outcome(f"no connection to {dest.url} ({type(exc).__name__})", stop=True)
    return Outcome(f"no answer from {dest.url} ({type(exc).__name__}): it may have been "
                   "stored", cut_off=True, stop=True)


def _by_reason(reason: int, what: str) -> Outcome:
    """PS3.18 Table 10.5.3-1: out of resources (A7xx), processing failure (0110) and
    resource limitation (0213) may pass; the others (data set does not match the SOP
    class, cannot understand, SOP class not supported, not authorized) will not."""
    if (reason & 0xFF00) == 0xA700 or reason in (0x0110, 0x0213):
        return Outcome(f"{what}: retried later", stop=(reason & 0xFF00) == 0xA700)
    return Outcome(f"{what}: refused", permanent=True)


def _failure_reason(answer: Dataset | None, sop: str) -> int | None:
    """The FailureReason the answer gives for this instance; None when it lists it as not
    failed. An instance failed without a reason counts as a processing failure."""
    for item in getattr(answer, "FailedSOPSequence", None) or []:
        if str(item.get("ReferencedSOPInstanceUID", "")) == sop:
            return int(item.get("FailureReason", 0x0110))
    return None


def _body(response: requests.Response) -> Dataset | None:
    """The DICOM JSON of an error answer, when it has one (Orthanc sends it untyped)."""
    try:
        return Dataset.from_json(response.json())
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _tls_reason(exc: requests.exceptions.SSLError) -> str:
    """What OpenSSL said, e.g. "certificate verify failed: unable to get local issuer
    certificate", without the layers requests and urllib3 wrap around it."""
    cause = getattr(exc.args[0] if exc.args else None, "reason", None) or exc
    for error in (cause, *getattr(cause, "args", ())):
        if isinstance(error, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {error.verify_message}"
        if isinstance(error, ssl.SSLError):
            return error.reason or str(error)
    return str(cause)[:200]
