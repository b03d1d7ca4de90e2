"""Output UIDs derived from the source series and its version, never random.

A resend of the same series version then carries the same Series and SOP
Instance UIDs, so the PACS replaces the objects instead of storing duplicates;
a new version (images arrived after processing) gets new ones.

The UIDs are name-based UUIDs (uuid5, SHA-1) written as 2.25 OIDs (ISO/IEC
9834-8). Not pydicom's ``generate_uid(prefix=None, entropy_srcs=...)``: with
prefix=None it ignores entropy_srcs and returns a random UUID.
"""

from __future__ import annotations

import uuid

# Changing the namespace changes every output UID.
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:trauma-node:dicom_out:v1")

SEG_SERIES = "seg/series"
SEG_INSTANCE = "seg/instance"
SR_SERIES = "sr/series"
SR_INSTANCE = "sr/instance"
# The SR issued again once the prior study was analysed (node.prior.amendment): same SR
# series, a new instance naming the first as its predecessor. .format(prior=Study UID)
SR_AMENDED_INSTANCE = "sr/instance/amended/{prior}"
SC_SERIES = "sc/series"
SC_INSTANCE = "sc/instance/{number}"  # one per image: .format(number=InstanceNumber)
PDF_SERIES = "pdf/series"
PDF_INSTANCE = "pdf/instance"
KOS_SERIES = "kos/series"
KOS_INSTANCE = "kos/instance"


def output_uid(source_series_uid: str, series_version: int, purpose: str) -> str:
    """The UID of one output (purpose: SEG_SERIES, SR_INSTANCE, 'tracking/hemorrhage', ...)."""
    if not source_series_uid:
        raise ValueError("the source series has no SeriesInstanceUID")
    return _uid(source_series_uid, str(int(series_version)), purpose)


def tracking_uid(source_series_uid: str, series_version: int, finding: str) -> str:
    """Tracking Unique Identifier of one finding, shared by the SEG segment and the SR group."""
    return output_uid(source_series_uid, series_version, f"tracking/{finding}")


def device_uid(algorithm_name: str) -> str:
    """Device Observer UID: one per algorithm name, the same in every report it writes."""
    return _uid("device", algorithm_name)


def _uid(*parts: str) -> str:
    """'2.25.' + the decimal UUID: at most 44 characters, within the 64 of a UI."""
    return f"2.25.{uuid.uuid5(NAMESPACE, chr(31).join(parts)).int}"
