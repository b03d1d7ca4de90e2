"""What every alert carries, whatever its channel: no more than a receiver needs to find
the study and act on it.

Carried: the alert id, the triggers met, the Study and Series Instance UIDs and series
version, the Accession Number when the images have one (the order the receiving RIS or EHR
files the result under), the risk tier, the hemorrhage and active extravasation volumes in
mL, when the result was made, the research-use statement, and the preliminary statement of
a series that may be incomplete. Never the patient's name, ID, birth date or sex, nor the
report text: the receiver finds the patient from the accession number or study UID in its
own records. The accession number is read from the images when the alert is sent; the
database does not store it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from node.store.database import Index, Instance, Job
from node.store.tables import AlertItem
from node.alerts.outcome import AlertNotDelivered


@dataclass(frozen=True)
class AlertContent:
    alert_id: str
    triggers: list[str]
    study_uid: str
    series_uid: str
    series_version: int
    accession_number: str | None
    risk_tier: str
    hemorrhage_ml: float
    active_extravasation_ml: float
    result_at: dt.datetime  # UTC, when the job finished
    research_use: str
    preliminary: str | None  # the series may be incomplete: why
    node: str  # which node sent it (node.config.node_identity)

    def summary(self) -> str:
        """One line for a person: what was found, and that it is research use only."""
        found = []
        if "high_risk" in self.triggers:
            found.append("high risk tier")
        if "active_extravasation" in self.triggers:
            found.append(f"active extravasation {self.active_extravasation_ml:.1f} mL")
        return (f"Trauma CT critical result: {', '.join(found)}; hemorrhage "
                f"{self.hemorrhage_ml:.1f} mL. Study {self.study_uid}"
                + (f", accession {self.accession_number}" if self.accession_number else "")
                + f". {self.research_use}" + (f" {self.preliminary}" if self.preliminary else ""))


def load(index: Index, spool_dir: Path, item: AlertItem, node: str) -> AlertContent:
    with index.session() as session:
        job = session.get(Job, item.job_id)
        if job is None:  # removed by retention before the alert could go
            raise AlertNotDelivered("the study's result is no longer held", permanent=True)
        result, finished_at = dict(job.result or {}), job.finished_at
        first = session.execute(select(Instance.path).where(
            Instance.series_id == job.series_id,
            Instance.series_version <= job.series_version).order_by(Instance.id).limit(1)).scalar()
    volumes = result.get("volumes_ml", {})
    return AlertContent(
        alert_id=item.alert_id, triggers=item.triggers.split(","), study_uid=item.study_uid,
        series_uid=item.series_uid, series_version=item.series_version,
        accession_number=_accession(spool_dir / first) if first else None,
        risk_tier=result.get("risk_tier", ""),
        hemorrhage_ml=round(float(volumes.get("hemorrhage") or 0.0), 1),
        active_extravasation_ml=round(float(volumes.get("active_extravasation") or 0.0), 1),
        result_at=(finished_at or item.created_at).replace(tzinfo=dt.timezone.utc),
        research_use=result.get("research_use", ""), preliminary=result.get("incomplete") and
        f"Preliminary: the series may be incomplete ({result['incomplete']}).", node=node)


def _accession(path: Path) -> str | None:
    try:
        value = dcmread(path, stop_before_pixels=True,
                        specific_tags=["AccessionNumber"]).get("AccessionNumber")
    except (InvalidDicomError, OSError, ValueError):
        return None  # spool already purged: the study UID still identifies it
    return (str(value).strip() or None) if value else None
