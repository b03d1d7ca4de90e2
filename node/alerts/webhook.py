"""The webhook: the alert as JSON, POSTed with an HMAC-SHA256 signature.

Headers: X-Trauma-Node-Timestamp (Unix seconds when this attempt was sent),
X-Trauma-Node-Signature: sha256=<hex HMAC-SHA256, key the shared secret, over
"<timestamp>.<raw body>">, X-Trauma-Node-Alert-Id (also Idempotency-Key). Signing the
timestamp with the body lets the receiver refuse a replay: a signature whose timestamp is
older than a few minutes. 2xx: delivered; 408, 425, 429, 5xx or no answer: retried; any
other 4xx: a dead letter.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

from node.config import AlertReceiver
from node.alerts.content import AlertContent
from node.alerts.http_post import post
from node.alerts.secrets import read_secret

EVENT = "trauma-node.critical-result"


def body(content: AlertContent) -> bytes:
    """The same bytes at every attempt: only the timestamp header changes."""
    return json.dumps({
        "event": EVENT,
        "alert_id": content.alert_id,
        "triggers": content.triggers,
        "study_instance_uid": content.study_uid,
        "series_instance_uid": content.series_uid,
        "series_version": content.series_version,
        "accession_number": content.accession_number,
        "risk_tier": content.risk_tier,
        "volumes_ml": {"hemorrhage": content.hemorrhage_ml,
                       "active_extravasation": content.active_extravasation_ml},
        "result_at": content.result_at.isoformat(timespec="seconds"),
        "summary": content.summary(),
        "research_use": content.research_use,
        "preliminary": content.preliminary,
        "node": content.node,
    }, sort_keys=True, separators=(",", ":")).encode()


def signature(secret: str, timestamp: str, raw_body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + raw_body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def send(content: AlertContent, receiver: AlertReceiver) -> None:
    raw = body(content)
    timestamp = str(int(time.time()))
    post(receiver, raw, {
        "Content-Type": "application/json",
        "X-Trauma-Node-Timestamp": timestamp,
        "X-Trauma-Node-Signature": signature(read_secret(receiver) or "", timestamp, raw),
        "X-Trauma-Node-Alert-Id": content.alert_id,
        "Idempotency-Key": content.alert_id,
    })
