"""Helpers of the verdict tests: reader accounts, an analysed study whose AI SR and SEG lie
where the worker writes them, and the API with an audit trail."""

from __future__ import annotations

import datetime as dt
import functools
import tempfile
from pathlib import Path

import pydicom

from support.nodes import API_TOKEN
from support.phantom import PhantomSpec, write_series
from support.qa_support import BLEED, ApiServer

from dicom_out.outputs import build_seg_and_sr
from node import __version__
from node.audit.trail import AuditTrail
from node.store.database import Index, Job, Series, Study, utcnow
from node.store.spool import results_dir
from node.work.results import ALGORITHM_NAME
from pipeline import PipelineSettings, run_series


@functools.lru_cache(maxsize=None)
def _phantom_dir() -> Path:
    root = Path(tempfile.mkdtemp(prefix="verdict-phantom-"))
    write_series(PhantomSpec(**BLEED), root / "bleed")
    return root / "bleed"


def analysed_study(settings, index: Index, finished_at: dt.datetime | None = None) -> dict:
    """The bleed phantom analysed by the real pipeline, its SEG and SR written into the
    results directory as the worker does, and its study, series and done job in the index.
    Returns the study and series UIDs, the job id and the AI objects' SOP Instance UIDs."""
    paths = sorted(_phantom_dir().glob("*.dcm"))
    findings = run_series(paths, PipelineSettings())
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    seg, sr = build_seg_and_sr(findings, sources, series_version=1,
                               algorithm_name=ALGORITHM_NAME, algorithm_version=__version__)
    study_uid = str(sources[0].StudyInstanceUID)
    series_uid = str(sources[0].SeriesInstanceUID)
    out = results_dir(settings, study_uid, series_uid, 1)
    out.mkdir(parents=True, exist_ok=True)
    seg.save_as(out / "seg.dcm", enforce_file_format=True)
    sr.save_as(out / "sr.dcm", enforce_file_format=True)
    result = findings.to_json_dict()
    result["outputs"] = {"directory": str(out), "objects": {"seg": ["seg.dcm"], "sr": ["sr.dcm"]}}
    with index.session() as session, session.begin():
        study = Study(study_uid=study_uid)
        series = Series(series_uid=series_uid, modality="CT", state="queued", version=1,
                        instance_count=len(paths), completed_at=utcnow(), study=study)
        job = Job(series=series, series_version=1, state="done", attempts=1,
                  started_at=utcnow(), finished_at=finished_at or utcnow(), result=result)
        session.add_all([study, series, job])
        session.flush()
        job_id = job.id
    return {"study_uid": study_uid, "series_uid": series_uid, "job_id": job_id,
            "sr_uid": str(sr.SOPInstanceUID), "seg_uid": str(seg.SOPInstanceUID),
            "sr_path": out / "sr.dcm", "seg_path": out / "seg.dcm"}


class AuditedApi(ApiServer):
    """create_app() with an audit trail, served by uvicorn in a thread on a free loopback port."""

    def __init__(self, data_dir: Path, tokens=(API_TOKEN,)):
        super().__init__(data_dir, tokens=list(tokens), audited=True)

    def audit_lines(self) -> list[str]:
        path = AuditTrail.file_path(self.settings)
        return path.read_text().splitlines() if path.exists() else []
