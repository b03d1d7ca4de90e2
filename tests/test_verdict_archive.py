"""The readers' verdicts stored to the archive (node.verdicts.archive): once a reader has
finished (verdicts.send_after_s without a new verdict), the study's verdict SR goes to the
destinations that take "verdict" objects through the outbox, a later correction sends a
second that supersedes the first (PredecessorDocumentsSequence), each exactly once; the PACS
down then up gets it once; retention removes the files with the study. Real parts: Orthanc
on loopback (DIMSE and DICOMweb), the API served by uvicorn, dciodvfy, PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
import time

import httpx
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.filebase import DicomBytesIO
from sqlalchemy import select

from support.nodes import API_TOKEN, AUTH, FAST, free_port, storescu, wait_for
from support.orthanc import Orthanc
from support.postgres import PostgresServer
from support.qa_support import api_settings
from support.verdict_support import AuditedApi, analysed_study

from node.config import ConfigError, Destination, load_settings
from node.http.app import create_app
from node.store import outbox, readers
from node.store import verdicts as store
from node.store.database import Index, utcnow
from node.store.retention import Retention
from node.store.tables import OutboxItem, Verdict
from node.verdicts import archive
from node.verdicts.archive import VerdictArchive
from node.work.delivery import Delivery

DCIODVFY = "/usr/bin/dciodvfy"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
PASSWORD = "orthanc-pw-verdicts"
LATER = dt.timedelta(seconds=5)  # past send_after_s without waiting for it


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def dciodvfy_problems(path) -> list[str]:
    """dciodvfy's errors, and its warnings but those on our private coding scheme."""
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")
            or (line.startswith("Warning") and "99TRAUMANODE" not in line)]


def configure(settings, destination: Destination, send_after_s: float = 1.0) -> None:
    settings.destinations = [destination]
    settings.verdicts.send_after_s = send_after_s
    settings.verdicts.check_interval_s = 0.1
    settings.delivery.base_delay_s = 0.3
    settings.delivery.max_delay_s = 1.0


def verdict_rows(index, study_uid) -> list[tuple[str, str]]:
    return [(d["sop_instance_uid"], d["state"]) for d in outbox.items_for_study(index, study_uid)
            if d["kind"] == "verdict"]


def test_a_readers_verdicts_reach_the_pacs_once_then_a_correction_supersedes_them(
        tmp_path, caplog):
    pacs = Orthanc(tmp_path / "orthanc", free_port(), free_port()).start()
    loops: list = []
    try:
        with AuditedApi(tmp_path / "data") as api, \
                httpx.Client(base_url=api.url, timeout=60) as client:
            settings, index = api.settings, api.index
            configure(settings, Destination(name="pacs", ae_title=pacs.aet, host="127.0.0.1",
                                            port=pacs.dicom_port))
            study = analysed_study(settings, index)
            uid = study["study_uid"]
            ai_sr = pydicom.dcmread(study["sr_path"])
            _, alice = readers.add(index, "alice", "Example^Alice")
            for body in ({"finding": "hemorrhage", "verdict": "accepted"},
                         {"finding": "organ/spleen", "verdict": "accepted"}):
                assert client.post(f"/studies/{uid}/verdicts", headers=bearer(alice),
                                   json=body).status_code == 201
            judged_at = time.monotonic()
            verdicts = VerdictArchive(settings, index)
            assert verdicts.enabled and verdicts.run_once() == []  # not quiet for 1 s yet
            delivery = Delivery(settings, index, audit=api.audit)
            with caplog.at_level(logging.INFO):
                for loop in (verdicts, delivery):
                    loop.start()
                    loops.append(loop)
                [first_uid] = wait_for(pacs.receptions, timeout=20, what="the verdict SR")
                assert time.monotonic() - judged_at >= 1.0  # after the quiet time, not per click
                first = pydicom.dcmread(DicomBytesIO(pacs.file(first_uid)))
                (tmp_path / "first.dcm").write_bytes(pacs.file(first_uid))
                assert dciodvfy_problems(tmp_path / "first.dcm") == []
                assert first.SOPClassUID == COMPREHENSIVE_SR and first.StudyInstanceUID == uid
                assert first.PatientID == ai_sr.PatientID and first.InstanceNumber == 1
                assert "PredecessorDocumentsSequence" not in first
                evidence = {i.ReferencedSOPInstanceUID
                            for s in first.CurrentRequestedProcedureEvidenceSequence
                            for series in s.ReferencedSeriesSequence
                            for i in series.ReferencedSOPSequence}
                assert study["sr_uid"] in evidence and study["seg_uid"] in evidence
                assert len([i for i in first.ContentSequence if i.ValueType == "CONTAINER"]) == 2

                # The reader corrects a finding: a second verdict SR, superseding the first.
                assert client.post(f"/studies/{uid}/verdicts", headers=bearer(alice), json={
                    "finding": "hemorrhage", "verdict": "corrected",
                    "corrected_volume_ml": 50.0}).status_code == 201
                wait_for(lambda: len(pacs.receptions()) == 2, timeout=20,
                         what="the second verdict SR")
                second_uid = pacs.receptions()[1]
                second = pydicom.dcmread(DicomBytesIO(pacs.file(second_uid)))
                (tmp_path / "second.dcm").write_bytes(pacs.file(second_uid))
                assert dciodvfy_problems(tmp_path / "second.dcm") == []
                [predecessor] = second.PredecessorDocumentsSequence
                named = predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
                assert named.ReferencedSOPInstanceUID == first_uid
                assert predecessor.StudyInstanceUID == uid
                assert second.SeriesInstanceUID == first.SeriesInstanceUID
                assert second_uid != first_uid and second.InstanceNumber == 2

                # Passes again and again: nothing more is made or sent.
                for _ in range(3):
                    assert verdicts.run_once() == []
                time.sleep(0.5)
                wait_for(lambda: all(state == "sent" for _, state in verdict_rows(index, uid)),
                         timeout=10, what="outbox rows sent")
            assert pacs.receptions() == [first_uid, second_uid]
            assert verdict_rows(index, uid) == [(first_uid, "sent"), (second_uid, "sent")]
            folder = settings.data_dir / "results" / uid / "assessments"
            assert sorted(p.name for p in folder.iterdir()) == ["verdicts-1.dcm", "verdicts-2.dcm"]
            # The download is the object stored to the archive.
            got = client.get(f"/studies/{uid}/verdicts.dcm", headers=AUTH)
            assert got.content == (folder / "verdicts-2.dcm").read_bytes()
            for loop in loops:
                assert loop.stop(10)
            loops.clear()
            sent = [line for line in api.audit_lines()
                    if "DICOM Instances Transferred" in line and 'EventActionCode="R"' in line]
        assert sent and all(COMPREHENSIVE_SR in line for line in sent)
        assert sum(f'"{uid}"' in line for line in sent) >= 2
        for secret in (str(ai_sr.PatientID), str(ai_sr.PatientName)):
            if secret:
                assert secret not in caplog.text and all(secret not in line for line in sent)
        assert "verdict SR" in caplog.text
    finally:
        for loop in loops:
            loop.stop(10)
        pacs.stop()


def test_the_pacs_down_then_up_gets_the_verdict_sr_once_over_dicomweb(tmp_path, monkeypatch):
    monkeypatch.setenv("PACS_PASSWORD", PASSWORD)
    pacs = Orthanc(tmp_path / "orthanc", free_port(), free_port(), dicomweb=True,
                   users={"trauma": PASSWORD})
    settings = api_settings(tmp_path / "data")
    settings.data_dir.mkdir(parents=True)
    configure(settings, Destination(name="pacs-web", url=f"{pacs.url}/dicom-web",
                                    allow_insecure_http=True, auth="basic", username="trauma",
                                    secret_env="PACS_PASSWORD"))
    index = Index(settings.database_url)
    try:
        study = analysed_study(settings, index)
        uid = study["study_uid"]
        reader, _ = readers.add(index, "alice")
        store.record(index, uid, "hemorrhage", "rejected", reader.id, note="bowel")
        verdicts, delivery = VerdictArchive(settings, index), Delivery(settings, index)
        [made] = verdicts.run_once(utcnow() + LATER)
        assert delivery.deliver_due() == 0  # the PACS is down
        assert verdict_rows(index, uid) == [(made.sop_instance_uid, "pending")]
        pacs.start()
        wait_for(lambda: delivery.deliver_due() == 1, timeout=15, what="delivery after backoff")
        for _ in range(3):
            assert verdicts.run_once(utcnow() + LATER) == []
            assert delivery.deliver_due() == 0
        assert pacs.receptions("Plugins") == [made.sop_instance_uid]
        assert verdict_rows(index, uid) == [(made.sop_instance_uid, "sent")]
    finally:
        pacs.stop()
        index.close()


def test_an_unsent_verdict_sr_is_withdrawn_and_retention_removes_them_with_the_study(tmp_path):
    settings = api_settings(tmp_path / "data")
    settings.data_dir.mkdir(parents=True)
    configure(settings, Destination(name="pacs", ae_title="PACS", host="127.0.0.1",
                                    port=free_port()))  # nobody there
    index = Index(settings.database_url)
    try:
        study = analysed_study(settings, index)
        uid = study["study_uid"]
        reader, _ = readers.add(index, "alice")
        verdicts = VerdictArchive(settings, index)
        store.record(index, uid, "hemorrhage", "accepted", reader.id)
        [one] = verdicts.run_once(utcnow() + LATER)
        store.record(index, uid, "risk_tier", "corrected", reader.id, note="moderate")
        assert verdicts.run_once() == []  # the new verdict is not quiet yet
        [two] = verdicts.run_once(utcnow() + LATER)
        # The first never left: withdrawn, and not named as the predecessor of the second.
        assert verdict_rows(index, uid) == [(one.sop_instance_uid, "withdrawn"),
                                            (two.sop_instance_uid, "pending")]
        second = pydicom.dcmread(two.path)
        assert "PredecessorDocumentsSequence" not in second and second.InstanceNumber == 2
        with index.session() as session:
            [row] = session.execute(select(OutboxItem).where(
                OutboxItem.sop_instance_uid == two.sop_instance_uid)).scalars().all()
        outbox.mark_started(index, row.id)  # its sending cut off: it may be at the PACS
        store.record(index, uid, "organ/spleen", "rejected", reader.id)
        [three] = verdicts.run_once(utcnow() + LATER)
        third = pydicom.dcmread(three.path)
        named = third.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
        assert named.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == two.sop_instance_uid
        assert three.path.endswith("verdicts-3.dcm") and third.InstanceNumber == 3
        # the one in doubt is not withdrawn: delivery settles it (asks the PACS, or sends it)
        assert [state for _, state in verdict_rows(index, uid)] == [
            "withdrawn", "pending", "pending"]
        outbox.mark_sent(index, row.id)
        assert verdicts.run_once(utcnow() + LATER) == []

        # Retention: a verdict SR still pending keeps the study; once sent, the study goes
        # with its verdict SRs and their outbox rows; the verdicts stay (agreement).
        settings.storage.retention_days = 1
        retention = Retention(settings, index)
        later = utcnow() + dt.timedelta(days=3)
        assert retention.run_once(later).studies == []
        with index.session() as session:
            [row] = session.execute(select(OutboxItem).where(
                OutboxItem.sop_instance_uid == three.sop_instance_uid)).scalars().all()
        outbox.mark_sent(index, row.id)
        folder = settings.data_dir / "results" / uid / "assessments"
        assert folder.is_dir()
        assert retention.run_once(later).studies == [uid]
        assert not folder.exists() and not (settings.data_dir / "results" / uid).exists()
        assert outbox.items_for_study(index, uid) == []
        assert len(store.for_study(index, uid)) == 3
        assert verdicts.run_once(later) == []  # the study is gone: nothing to make
    finally:
        index.close()


def test_verdicts_and_their_archive_on_postgresql(tmp_path):
    """Storing verdicts, superseding, the agreement query, the API and the archive's
    queries on PostgreSQL (a shared database), not only SQLite."""
    with PostgresServer() as pg:
        settings = api_settings(tmp_path / "data")
        settings.data_dir.mkdir(parents=True)
        settings.storage.database_url = pg.url
        configure(settings, Destination(name="pacs", ae_title="PACS", host="127.0.0.1",
                                        port=free_port()))
        index = Index(pg.url)
        try:
            study = analysed_study(settings, index)
            uid = study["study_uid"]
            alice, _ = readers.add(index, "alice", "Example^Alice")
            bob, _ = readers.add(index, "bob")
            store.record(index, uid, "hemorrhage", "accepted", alice.id)
            ai = next(f for f in store.study_view(index, uid)["findings"]
                      if f["key"] == "hemorrhage")["ai_volume_ml"]
            corrected = store.record(index, uid, "hemorrhage", "corrected", alice.id,
                                     corrected_volume_ml=ai + 10.0, note="ünïcode note")
            assert len(corrected["superseded"]) == 1
            store.record(index, uid, "organ/spleen", "accepted", bob.id)
            store.record(index, uid, "risk_tier", "rejected", bob.id)
            with pytest.raises(store.VerdictError):
                store.record(index, uid, "hemorrhage", "maybe", bob.id)
            assert [v["verdict"] for v in store.for_study(index, uid)] == [
                "accepted", "corrected", "accepted", "rejected"]
            view = store.study_view(index, uid, "alice")
            assert next(f for f in view["findings"]
                        if f["key"] == "hemorrhage")["mine"]["verdict"] == "corrected"
            result = store.agreement(index, "week")
            assert result["overall"]["judged"] == 3 and result["overall"]["accepted"] == 1
            assert result["overall"]["agreement"] == round(1 / 3, 4)
            hemorrhage = next(r for r in result["by_finding_type"]
                              if r["finding_type"] == "hemorrhage")
            assert hemorrhage["mean_abs_volume_difference_ml"] == 10.0
            assert len(store.export(index, study_uid=uid)) == 4

            verdicts = VerdictArchive(settings, index)
            assert archive.due(index, 1.0) == []
            assert archive.due(index, 1.0, utcnow() + LATER) == [
                (uid, max(v["id"] for v in store.for_study(index, uid)))]
            [made] = verdicts.run_once(utcnow() + LATER)
            assert verdicts.run_once(utcnow() + LATER) == []
            assert verdict_rows(index, uid) == [(made.sop_instance_uid, "pending")]
            sr = pydicom.dcmread(made.path)
            assert len([i for i in sr.ContentSequence if i.ValueType == "CONTAINER"]) == 3
            # The API on PostgreSQL: a verdict, the study's view, the agreement, the SR.
            app = create_app(settings, index, tokens=[API_TOKEN])
            with TestClient(app) as client:
                _, carol = readers.add(index, "carol")
                posted = client.post(f"/studies/{uid}/verdicts", headers=bearer(carol),
                                     json={"finding": "organ/spleen", "verdict": "rejected"})
                assert posted.status_code == 201, posted.text
                view = client.get(f"/studies/{uid}/verdicts", headers=AUTH).json()
                assert len(view["verdicts"]) == 5
                agreed = client.get("/verdicts/agreement?by=day", headers=AUTH).json()
                assert agreed["overall"]["judged"] == 4
                dcm = client.get(f"/studies/{uid}/verdicts.dcm", headers=AUTH)
                assert dcm.status_code == 200 and dcm.headers["x-verdicts"] == "4"
            [again] = verdicts.run_once(utcnow() + LATER)  # carol's verdict: the next SR
            assert pydicom.dcmread(again.path).InstanceNumber == 2
            with index.session() as session:
                assert session.execute(select(Verdict.id)).first() is not None
        finally:
            index.close()


def test_the_verdicts_settings(tmp_path):
    settings = load_settings("/dev/null", env={"TRAUMA_NODE_DESTINATIONS": json.dumps(
        [{"name": "pacs", "ae_title": "PACS", "host": "h", "port": 104}])})
    assert settings.verdicts.send_after_s == 60.0
    assert settings.destinations[0].objects == ["seg", "sr", "verdict"]
    config = tmp_path / "node.toml"
    config.write_text('[verdicts]\nsend_after_s = 5\n[[destinations]]\nname = "p"\n'
                      'ae_title = "PACS"\nhost = "h"\nport = 104\nobjects = ["verdict"]\n')
    settings = load_settings(config, env={"TRAUMA_NODE_VERDICTS_SEND_AFTER_S": "0"})
    assert settings.verdicts.send_after_s == 0 and settings.destinations[0].objects == ["verdict"]
    assert not VerdictArchive(settings, None).enabled  # 0: never sent
    with pytest.raises(ConfigError) as info:
        load_settings(config, env={"TRAUMA_NODE_VERDICTS_SEND_AFTER_S": "-1"})
    assert "verdicts.send_after_s" in str(info.value)


def test_serve_sends_the_verdict_sr_beside_the_ai_result_and_stops_cleanly(
        tmp_path, node_factory, phantom_factory):
    truth = phantom_factory("verdict-archive-e2e", slices=40, rows=128, cols=128,
                            pixel_spacing=(3.125, 3.125), blood="small")
    pacs = Orthanc(tmp_path / "orthanc", free_port(), free_port()).start()
    try:
        node = node_factory(FAST + f"""
[delivery]
base_delay_s = 0.5
max_delay_s = 1.0
[verdicts]
send_after_s = 1
check_interval_s = 0.2

[[destinations]]
name = "pacs"
ae_title = "{pacs.aet}"
host = "127.0.0.1"
port = {pacs.dicom_port}
""")
        storescu([truth.paths[0].parent], node.dicom_port)
        node.wait_series_state(truth.spec.series_uid, {"done"}, timeout=120)
        wait_for(lambda: len(pacs.receptions()) == 2, timeout=30, what="the SEG and SR")
        index = Index(f"sqlite:///{node.data_dir / 'index.sqlite'}")
        try:
            _, token = readers.add(index, "alice")
        finally:
            index.close()
        uid = truth.spec.study_uid
        with httpx.Client(base_url=node.url, timeout=30) as client:
            for finding in ("hemorrhage", "active_extravasation"):
                assert client.post(f"/studies/{uid}/verdicts", headers=bearer(token), json={
                    "finding": finding, "verdict": "accepted"}).status_code == 201
        wait_for(lambda: len(pacs.receptions()) == 3, timeout=20, what="the verdict SR")
        verdict_sr = pydicom.dcmread(DicomBytesIO(pacs.file(pacs.receptions()[2])))
        assert verdict_sr.SOPClassUID == COMPREHENSIVE_SR and verdict_sr.StudyInstanceUID == uid
        assert node.stop() == 0
        assert "verdict-archive still busy" not in node.log()
        assert "verdict SR" in node.log()
    finally:
        pacs.stop()
