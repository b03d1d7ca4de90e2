"""A receiver's secret (webhook HMAC key, FHIR bearer token), read when it is used, from
the file or environment variable named in [[alerts]]; never logged."""

from __future__ import annotations

import os
from pathlib import Path

from node.config import AlertReceiver
from node.alerts.outcome import AlertNotDelivered


def read_secret(receiver: AlertReceiver) -> str | None:
    """None when the receiver has none configured; AlertNotDelivered (retried) when the
    one configured cannot be read now."""
    if not (receiver.secret_file or receiver.secret_env):
        return None
    try:
        secret = (Path(receiver.secret_file).expanduser().read_text().strip()
                  if receiver.secret_file else os.environ.get(receiver.secret_env, "").strip())
    except OSError as exc:
        raise AlertNotDelivered(f"secret_file {receiver.secret_file} unreadable "
                                f"({exc.strerror})") from None
    if not secret:
        raise AlertNotDelivered("empty secret: " + (f"secret_file {receiver.secret_file}"
                                if receiver.secret_file else f"${receiver.secret_env}"))
    return secret
