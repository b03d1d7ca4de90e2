"""Which instances a DICOMweb destination holds: QIDO-RS, one search per instance, by its
Study, Series and SOP Instance UID (verify_interrupted = "query")."""

from __future__ import annotations

import requests

from node.config import Destination
from node.dicom.scu import QueryUnanswered
from node.dicomweb.client import DicomwebUnavailable, open_client

SOP_INSTANCE_UID = "00080018"


def held_instances(uids: list[tuple[str, str, str]], dest: Destination,
                   timeout_s: float) -> set[str]:
    """The SOP Instance UIDs of uids (Study, Series, SOP Instance UID) that dest holds.
    Raises QueryUnanswered when a search gets no answer, or an error."""
    try:
        client = open_client(dest, timeout_s)
    except DicomwebUnavailable as exc:
        raise QueryUnanswered(str(exc)) from None
    held: set[str] = set()
    for study, series, sop in uids:
        try:
            found = client.search_for_instances(study, series,
                                                search_filters={"SOPInstanceUID": sop})
        except requests.HTTPError as exc:
            raise QueryUnanswered(f"QIDO-RS HTTP {exc.response.status_code}") from None
        except (requests.RequestException, ValueError) as exc:
            raise QueryUnanswered(f"no QIDO-RS answer ({type(exc).__name__})") from None
        if any(sop in (match.get(SOP_INSTANCE_UID) or {}).get("Value", []) for match in found):
            held.add(sop)
    return held
