"""What a finished job's result must show to call for a critical-result alert."""

from __future__ import annotations

from typing import Any


def fired(result: dict[str, Any] | None) -> list[str]:
    """The triggers (node.config.ALERT_TRIGGERS) a job's result meets. A series the
    pipeline could not assess meets none: it has no risk tier to alert on."""
    if not result or result.get("risk_tier") in (None, "not_assessed") \
            or not result.get("assessment", {}).get("assessed", True):
        return []
    met = []
    if result["risk_tier"] == "high":
        met.append("high_risk")
    if float(result.get("volumes_ml", {}).get("active_extravasation") or 0.0) > 0.0:
        met.append("active_extravasation")
    return met


def for_receiver(met: list[str], wanted: list[str]) -> list[str]:
    return [trigger for trigger in met if trigger in wanted]
