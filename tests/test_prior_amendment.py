"""The re-report once the prior is analysed (node.prior.amendment): with one worker the new
study is reported first, without the comparison; when the prior's analysis is done, an
amended SR supersedes the first (PredecessorDocumentsSequence), carries the interval
change, reaches the PACS once, and the findings, report and Q&A say the change. A lookup
cut off by a stop is done again at the next start."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import highdicom as hd
import httpx
import pydicom
import pytest
from sqlalchemy import insert, select, update

from dicom_out import uids
from node.config import Destination, PriorSection, Settings, WorkersSection
from node.prior import amendment, state
from node.store import outbox
from node.store.database import Index, Job, JobState, Series, SeriesState
from node.store.headers import extract
from node.store.receiving import Receiver
from node.store.spool import Spool, results_dir
from node.work import worker
from node.work.results import previous_sr
from support.nodes import AUTH, wait_for
from support.orthanc import Orthanc
from support.qa_support import ask
from test_dicom_out_objects import _dciodvfy_problems
from test_prior_study import COARSE, COMPREHENSIVE_3D_SR, PATIENT_ID, PATIENT_NAME, \
    _texts, dated_copy, findings_of, prior_in_the_pacs

NOT_YET = "Comparison with a prior study: none made ("


def late_prior_config(pacs_port: int) -> str:
    """One worker, and a prior that completes only after a quiet period (its copy does not
    say how many images it has): the new study's job runs first and cannot wait for it."""
    return f"""
[completion]
quiet_period_s = 3.0
check_interval_s = 0.1
[selection]
min_slices = 10
[storage]
min_free_disk_mb = 10
[workers]
count = 1
[prior]
enabled = true
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs_port}
lookback_days = 365
timeout_s = 30
wait_s = 2
poll_interval_s = 0.2
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs_port}
objects = ["sr"]
"""


def uncounted(paths: list[Path]) -> list[Path]:
    """The files without ImagesInAcquisition: the node waits for quiet to complete them."""
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.ImagesInAcquisition
        ds.save_as(path)
    return paths


def study_srs(pacs: Orthanc, study_uid: str) -> list[pydicom.Dataset]:
    found = httpx.post(f"{pacs.url}/tools/find", json={
        "Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}},
        timeout=10).json()
    datasets = [pydicom.dcmread(pydicom.filebase.DicomBytesIO(httpx.get(
        f"{pacs.url}/instances/{i}/file", timeout=30).content)) for i in found]
    return sorted(datasets, key=lambda ds: int(ds.InstanceNumber))


def test_the_prior_analysed_after_the_new_study_is_re_reported_once(
        node_factory, phantom_factory, tmp_path):
    with prior_in_the_pacs(node_factory, phantom_factory, tmp_path,
                           config_of=late_prior_config, prepare=uncounted) as (
            node, prior_truth, current_truth, pacs):
        study = current_truth.spec.study_uid
        srs = wait_for(lambda: (lambda found: found if len(found) == 2 else None)(
            study_srs(pacs, study)), timeout=120, interval=0.5,
            what="the first and the amended SR in the PACS")
        with httpx.Client(timeout=30) as client:
            now = findings_of(client, node, study, timeout=30)
            then = findings_of(client, node, prior_truth.spec.study_uid, timeout=30)
            text, _, _ = ask(client, node.url, study,
                             "How has the bleeding changed since the prior?", headers=AUTH)

            def all_sent():
                found = client.get(f"{node.url}/studies/{study}/deliveries",
                                   headers=AUTH).json()["deliveries"]
                return found if all(d["state"] == "sent" for d in found) else None
            deliveries = wait_for(all_sent, timeout=30, what="the SRs recorded as sent")
        received_amended = pacs.receptions()

    first, amended = srs
    first_texts = dict(_texts(first.ContentSequence))
    assert NOT_YET in first_texts["Comparison to previous studies"]
    assert first.SeriesInstanceUID == amended.SeriesInstanceUID
    (predecessor,) = amended.PredecessorDocumentsSequence
    assert predecessor.StudyInstanceUID == study
    (series,) = predecessor.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    then_ml, now_ml = then["volumes_ml"]["hemorrhage"], now["volumes_ml"]["hemorrhage"]
    assert 0 < then_ml < now_ml
    volumes = f"{now_ml:.1f} mL now versus {then_ml:.1f} mL then"
    comparison = dict(_texts(amended.ContentSequence))["Comparison to previous studies"]
    assert volumes in comparison and NOT_YET not in comparison

    change = now["interval"]
    assert change["compared"] and change["prior_study_uid"] == prior_truth.spec.study_uid
    assert change["new"] and not change["resolved"]
    assert volumes in now["report"] and NOT_YET not in now["report"]  # replaced, not appended
    assert volumes in text  # the Q&A

    srs_queued = [d for d in deliveries if d["kind"] == "sr"]
    assert [d["sop_instance_uid"] for d in srs_queued] == [first.SOPInstanceUID,
                                                           amended.SOPInstanceUID]
    assert {d["state"] for d in srs_queued} == {"sent"}
    assert received_amended.count(amended.SOPInstanceUID) == 1

    out = next(node.data_dir.glob(f"results/{study}/*/v1"))
    assert (out / "report.txt").read_text() == now["report"]
    errors, _ = _dciodvfy_problems(out / amendment.AMENDED_SR)
    assert errors == []
    assert hd.sr.srread(out / amendment.AMENDED_SR).SOPClassUID == COMPREHENSIVE_3D_SR
    log = node.log()
    assert log.count("re-reported with the comparison to the prior study") == 1
    for secret in (PATIENT_NAME, PATIENT_ID):
        assert secret not in log


# The guard, in one process: the same amendment asked for twice (as by the prior's job and
# the new study's job, or two nodes) is made and queued once.

@pytest.fixture
def node(tmp_path):
    settings = Settings()
    settings.node.data_dir = str(tmp_path / "data")
    settings.data_dir.mkdir()
    settings.workers = WorkersSection(count=1, held_memory_mb=0)
    settings.prior = PriorSection(enabled=True, ae_title="PACS", host="127.0.0.1", wait_s=0,
                                  poll_interval_s=0.05)
    settings.destinations = [Destination(name="pacs", ae_title="PACS", host="127.0.0.1",
                                         port=104, objects=["seg", "sr"])]
    index = Index(settings.database_url)
    yield settings, index, Receiver(index, Spool(settings.spool_dir))
    index.close()


def received(index: Index, receiver: Receiver, paths: list[Path]) -> None:
    """Stored and completed, as receiving and the completion monitor do: its job queued."""
    series_uid = ""
    for path in paths:
        ds = pydicom.dcmread(path)
        series_uid = str(ds.SeriesInstanceUID)
        receiver.store(extract(ds), path.read_bytes(), str(ds.file_meta.TransferSyntaxUID),
                       "CT1", 1)
    with index.engine.begin() as conn:
        conn.execute(update(Series).where(Series.series_uid == series_uid).values(
            state=SeriesState.QUEUED.value))
        series_id = conn.execute(select(Series.id).where(Series.series_uid == series_uid)).scalar()
        conn.execute(insert(Job).values(series_id=series_id, series_version=1,
                                        state=JobState.QUEUED.value))


def test_the_amendment_is_made_and_queued_once(node, phantom_factory, tmp_path, monkeypatch):
    settings, index, receiver = node
    prior = phantom_factory("prior-then", **COARSE, blood="small")
    current = phantom_factory("prior-now", **COARSE, blood="large")
    study, prior_study = current.spec.study_uid, prior.spec.study_uid
    state.write(settings.data_dir, study, state.RETRIEVED, prior_study_uid=prior_study,
                prior_study_date="20250101")
    state.write(settings.data_dir, prior_study, state.IS_PRIOR, of=study)
    received(index, receiver, current.paths)
    received(index, receiver, dated_copy(prior.paths, tmp_path / "prior", days_ago=30))

    assert worker.run_one(index, settings, "test/serve-1")  # the new study, first
    out = results_dir(settings, study, current.spec.series_uid, 1)
    assert not (out / amendment.AMENDED_SR).exists()
    with index.engine.connect() as conn:
        first = conn.execute(select(Job.result).order_by(Job.id).limit(1)).scalar()
    assert first["interval"]["awaiting_prior"] and NOT_YET in first["report"]

    monkeypatch.setattr(worker, "_after_finish", lambda *args: None)  # the guard, below
    assert worker.run_one(index, settings, "test/serve-1")  # the prior
    made: list[int] = []
    start = threading.Barrier(2)

    def amend() -> None:
        start.wait()
        made.append(amendment.amend_study(settings, index, study))

    threads = [threading.Thread(target=amend) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(made) == [0, 1]
    assert amendment.after_job(settings, index, prior_study, None) == 0  # done: nothing again

    amended_uid = uids.output_uid(current.spec.series_uid, 1,
                                  uids.SR_AMENDED_INSTANCE.format(prior=prior_study))
    rows = [r for r in outbox.items_for_study(index, study) if r["kind"] == "sr"]
    assert [r["sop_instance_uid"] for r in rows].count(amended_uid) == 1
    sr = pydicom.dcmread(out / amendment.AMENDED_SR)
    assert sr.SOPInstanceUID == amended_uid and sr.InstanceNumber == 2
    first_sr = pydicom.dcmread(out / "sr.dcm")
    assert (sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
            .ReferencedSOPSequence[0].ReferencedSOPInstanceUID) == first_sr.SOPInstanceUID
    seg = pydicom.dcmread(out / "seg.dcm", stop_before_pixels=True)
    evidence = {item.ReferencedSOPInstanceUID
                for study_item in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study_item.ReferencedSeriesSequence
                for item in series.ReferencedSOPSequence}
    assert seg.SOPInstanceUID in evidence
    with index.engine.connect() as conn:
        result = conn.execute(select(Job.result).order_by(Job.id).limit(1)).scalar()
    assert result["interval"]["compared"] and NOT_YET not in result["report"]
    assert result["report"].count("Comparison with the prior CT of") == 1
    assert result["outputs"]["amended"]["supersedes"] == first_sr.SOPInstanceUID
    # A reader's verdict judges the report last issued: the verdict SR references the amended SR.
    from node.http.context import ApiContext
    from node.http.verdicts import ai_objects
    judged_sr, judged_seg = ai_objects(ApiContext(settings, index, None, []), 1)
    assert judged_sr.SOPInstanceUID == amended_uid
    assert judged_seg.SOPInstanceUID == seg.SOPInstanceUID

    # A process that died after making the file, before the result was stored: the next
    # check finishes the steps, and makes nothing twice.
    with index.engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == 1).values(result=first))
    assert amendment.amend_study(settings, index, study) == 0
    with index.engine.connect() as conn:
        assert conn.execute(select(Job.result).where(Job.id == 1)).scalar()["interval"]["compared"]
    rows = [r for r in outbox.items_for_study(index, study) if r["kind"] == "sr"]
    assert [r["sop_instance_uid"] for r in rows].count(amended_uid) == 1
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    # A later version of the series supersedes the amended SR, the report last issued.
    assert previous_sr(out.parent / "v2", 2).SOPInstanceUID == amended_uid


def test_a_lookup_cut_off_by_a_stop_is_done_again_and_retention_forgets_it(node, phantom_factory):
    """The loop looks a study up once; one still LOOKING when `serve` starts was cut off by
    the stop (its job would wait prior.wait_s, then say the lookup never finished): it is
    looked up again, first. Its state file goes with the study (retention)."""
    from node.prior.lookup import PriorLookup
    from node.store.retention import Retention

    settings, index, receiver = node
    current = phantom_factory("prior-now", **COARSE, blood="large")
    study = current.spec.study_uid
    received(index, receiver, current.paths)
    state.write(settings.data_dir, study, state.LOOKING)
    state.write(settings.data_dir, "1.2.3.999", state.LOOKING)  # a study no longer here

    lookup = PriorLookup(settings, index)
    lookup.since = dt.datetime.utcnow() + dt.timedelta(days=1)  # nothing new since the start
    again = lookup._new_studies()
    assert [uid for uid, _ in again] == [study]
    assert again[0][1].is_file() and again[0][1].is_relative_to(settings.spool_dir)
    assert state.read(settings.data_dir, "1.2.3.999") is None  # let go
    assert lookup._new_studies() == []  # once, at start

    with index.engine.begin() as conn:  # analysed and delivered long ago
        conn.execute(update(Job).values(state=JobState.DONE.value))
    settings.storage.retention_days = 1
    later = dt.datetime.utcnow() + dt.timedelta(days=2)
    retention = Retention(settings, index)
    assert retention.run_once(now=later).studies == []  # its association is still open
    receiver.association_closed(1)
    assert retention.run_once(now=later).studies == [study]
    assert state.read(settings.data_dir, study) is None
