"""The verdict SR of a study (dicom_out.verdict_sr) from its current verdicts and the AI
objects they judged, as the worker wrote them (data/results/...).

Its SOP Instance UID derives from the set of verdicts it holds, so the same verdicts give
the same object. Once stored to the archive (node.verdicts.archive) that object is a file
under data/results/<study>/assessments/, and what GET /studies/{uid}/verdicts.dcm serves;
before, it is built on request the way the archive would build it now (the same
predecessor and instance number).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select

from dicom_out import uids
from dicom_out.verdict_sr import Assessment, build_verdict_sr, tracking_uids, verdict_uids
from node import __version__
from node.config import Settings
from node.store import verdicts as store
from node.store.database import Index
from node.store.spool import results_dir
from node.store.tables import Job, Series, Study

log = logging.getLogger("trauma_node.verdicts")

NODE_NAME = "trauma-node"


class NoVerdictSR(Exception):
    """No verdict SR can be made for the study (no verdicts, or the AI objects judged are
    gone); status: the HTTP status that says so."""

    def __init__(self, message: str, status: int = 409):
        super().__init__(message)
        self.status = status


@dataclass
class Current:
    """What a study's verdict SR holds now."""
    study_uid: str
    objects: list[Dataset]  # the AI SR (and SEG) of each analysis judged
    assessments: list[Assessment]
    included: list[dict]  # the verdicts it holds (node.store.verdicts rows)
    last_verdict_id: int  # the newest verdict on the study: the set's version

    @property
    def uids(self) -> tuple[str, str]:
        """(Series Instance UID, SOP Instance UID) of its SR."""
        return verdict_uids(self.study_uid, self.assessments)


def ai_objects(settings: Settings, index: Index, job_id: int) -> tuple[Any, Any] | None:
    """(AI SR header, AI SEG header or None) of a job as the worker wrote them, or None when
    they are not on the node (removed by retention, or never written)."""
    with index.session() as session:
        row = session.execute(
            select(Job.result, Job.series_version, Series.series_uid, Study.study_uid)
            .join(Series, Job.series_id == Series.id).join(Study, Series.study_id == Study.id)
            .where(Job.id == job_id)).first()
    if row is None:
        return None
    result, version, series_uid, study_uid = row
    outputs = (result or {}).get("outputs") if isinstance(result, dict) else None
    names = (outputs or {}).get("objects") or {}
    # The report the reader last saw: the SR amended with the prior study's comparison
    # (node.prior.amendment), which supersedes the first, when there is one.
    sr_name = (((outputs or {}).get("amended") or {}).get("sr") or names.get("sr")
               or ["sr.dcm"])[0]
    # Where the worker said it wrote them, else where they belong in this data directory
    # (a data directory moved since).
    places = [Path(outputs["directory"])] if outputs and outputs.get("directory") else []
    places.append(results_dir(settings, study_uid, series_uid, version))
    for directory in places:
        sr_path = directory / sr_name
        seg_path = directory / ((names.get("seg") or ["seg.dcm"])[0])
        try:
            sr = pydicom.dcmread(sr_path)
            break
        except (OSError, pydicom.errors.InvalidDicomError):
            continue
    else:
        return None
    try:
        seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError):
        seg = None
    return sr, seg


def current(settings: Settings, index: Index, study_uid: str) -> Current:
    """The study's current verdicts as assessments of the AI objects they judged; raises
    NoVerdictSR when there is nothing to report."""
    verdicts = store.for_study(index, study_uid, current_only=True)
    if not verdicts:
        raise NoVerdictSR(f"study {study_uid} has no verdicts yet")
    objects: list = []
    assessments: list[Assessment] = []
    included: list[dict] = []
    skipped_jobs: set[int] = set()
    by_job: dict[int, tuple[Any, dict[str, str]] | None] = {}
    for v in verdicts:
        if v["job_id"] not in by_job:
            found = ai_objects(settings, index, v["job_id"])
            if found is None:
                by_job[v["job_id"]] = None
            else:
                sr, seg = found
                objects.append(sr)
                if seg is not None:
                    objects.append(seg)
                by_job[v["job_id"]] = (sr, tracking_uids(sr))
        judged = by_job[v["job_id"]]
        if judged is None:
            skipped_jobs.add(v["job_id"])
            continue
        sr, tracking = judged
        # The AI SR's tracking UIDs derive from the source series, version and finding key.
        wanted = uids.tracking_uid(v["series_uid"], v["series_version"], v["finding_key"])
        assessments.append(Assessment(
            finding_key=v["finding_key"], label=store.label_of(v["finding_key"]),
            ai_value=v["ai_value"], verdict=v["verdict"], reader=v["reader"],
            reader_display_name=v["reader_display_name"],
            when=dt.datetime.fromisoformat(v["created_at"].rstrip("Z")),
            ai_sr_uid=str(sr.SOPInstanceUID), corrected_volume_ml=v["corrected_volume_ml"],
            note=v["note"], tracking_uid=wanted if wanted in tracking.values() else None,
            verdict_id=v["id"]))
        included.append(v)
    if not assessments:
        raise NoVerdictSR(f"the AI result objects (SR, SEG) that study {study_uid}'s "
                          "verdicts judged are no longer on this node")
    if skipped_jobs:
        log.warning("verdict SR of study %s: the AI objects of job(s) %s are gone; their "
                    "verdicts are left out", study_uid, sorted(skipped_jobs))
    # A new verdict is always current (it supersedes, it is not superseded): the newest
    # current verdict is the newest of all, and names this set.
    return Current(study_uid, objects, assessments, included, max(v["id"] for v in verdicts))


def build(now: Current, predecessor: Dataset | None = None,
          instance_number: int = 1) -> Dataset:
    """The verdict SR of the current verdicts, superseding predecessor when given."""
    return build_verdict_sr(now.objects, now.assessments, node_name=NODE_NAME,
                            node_version=__version__, predecessor=predecessor,
                            instance_number=instance_number)


def to_bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def study_sr(settings: Settings, index: Index, study_uid: str) -> tuple[bytes, list[dict]]:
    """The verdict SR of the study's current verdicts, and the verdicts it holds: the file
    stored to the archive when this set of verdicts has been, else built as it would be
    now."""
    from node.verdicts import archive  # archive builds on this module

    now = current(settings, index, study_uid)
    stored = archive.stored(index, study_uid)
    _, sop_uid = now.uids
    for entry in stored:
        if entry.sop_instance_uid == sop_uid:
            try:
                return Path(entry.path).read_bytes(), now.included
            except OSError:
                break  # gone: built again below, the same way
    predecessor = archive.predecessor_of(stored, sop_uid)
    return to_bytes(build(now, archive.predecessor_header(study_uid, predecessor),
                          archive.number_of(stored, sop_uid))), now.included
