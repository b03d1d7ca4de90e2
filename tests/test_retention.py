"""Retention: studies leave the node after storage.retention_days, once nothing of them
is in flight; what is removed, what is kept, and that nothing acknowledged is lost."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import httpx
from sqlalchemy import select

from support.nodes import AUTH, FAST, ROOT, free_port, storescu, wait_for
from support.qa_support import ask

# 8 s: long enough for the study to be analysed and asked about first, even on a busy machine.
SHORT = 8.0 / 86400


def _config(retention_days: float, extra: str = "") -> str:
    return FAST.replace("[storage]\n", f"[storage]\nretention_days = {retention_days!r}\n"
                        "retention_check_interval_s = 0.5\n") + extra


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_an_expired_study_is_removed_and_can_be_received_again(node_factory, phantom_factory):
    truth = phantom_factory("retention", slices=20, rows=64, cols=64, blood="small")
    uid = truth.spec.study_uid
    node = node_factory(_config(SHORT))
    spool, results = node.data_dir / "spool" / uid, node.data_dir / "results" / uid
    storescu(truth.paths, node.dicom_port)
    with httpx.Client(timeout=30) as client:
        def analysed():
            r = client.get(f"{node.url}/studies/{uid}/findings", headers=AUTH)
            return r.status_code == 200
        wait_for(analysed, timeout=60, interval=0.1, what="Findings")
        ask(client, node.url, uid, "How much blood is there?")
        assert len(_files(spool)) == len(truth.paths) and _files(results)

        def gone():  # the rows go first, then the files they named
            return (client.get(f"{node.url}/studies/{uid}", headers=AUTH).status_code == 404
                    and not spool.exists() and not results.exists())
        wait_for(gone, timeout=30, interval=0.2, what="the study and its files removed")
        assert client.get(f"{node.url}/studies", headers=AUTH).json() == []
        assert "retention: removed 1 studies" in node.log()
        assert uid not in node.log().split("retention: removed")[-1]  # no UIDs needed there

        # The PACS sends it again: a new study, analysed again, nothing refused.
        storescu(truth.paths, node.dicom_port)
        wait_for(analysed, timeout=60, interval=0.1, what="Findings of the study sent again")
        assert len(_files(spool)) == len(truth.paths)


def test_results_never_delivered_keep_their_study(node_factory, phantom_factory):
    # A whole abdomen in the field of view (400 mm, 200 mm long): assessed, so a SEG and an SR.
    truth = phantom_factory("retention-dead", slices=40, rows=64, cols=64, pixel_spacing=(6.25, 6.25),
                            slice_spacing=5.0, blood="small")
    uid = truth.spec.study_uid
    node = node_factory(_config(SHORT, f"""
[delivery]
base_delay_s = 0.1
max_attempts = 1
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = {free_port()}
"""))
    storescu(truth.paths, node.dicom_port)

    def dead():
        studies = node.studies()
        d = studies[0]["deliveries"] if studies else []
        return len(d) == 2 and all(x["state"] == "dead" for x in d)
    wait_for(dead, timeout=60, what="dead letters")
    wait_for(lambda: "kept 1 expired studies whose results were never delivered" in node.log(),
             timeout=30, what="the retention pass that keeps it")
    assert [s["study_uid"] for s in node.studies()] == [uid]
    assert len(_files(node.data_dir / "spool" / uid)) == len(truth.paths)


def test_retention_zero_keeps_everything_and_the_preview_command(node_factory, phantom_factory):
    truth = phantom_factory("retention-keep", slices=20, rows=64, cols=64, blood="none")
    node = node_factory(_config(0.0))
    storescu(truth.paths, node.dicom_port)
    node.wait_series_state(truth.spec.series_uid, {"done"})
    assert "storage.retention_days = 0, studies are kept" in node.log()

    def preview(days: float) -> str:
        config = node.tmp / f"preview-{days}.toml"
        config.write_text(_config(days))
        result = subprocess.run(
            [sys.executable, "-m", "node.cli", "retention", "--config", str(config),
             "--data-dir", str(node.data_dir)],
            cwd=ROOT, env=node.env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout
    assert "nothing to remove" in preview(1.0)  # received just now
    wait_for(lambda: "1 studies" in preview(SHORT), timeout=30, what="the study expired")
    text = preview(SHORT)
    assert f"{len(truth.paths)} instances" in text and truth.spec.study_uid in text
    assert node.studies()  # a preview removes nothing


def test_a_file_that_arrives_during_removal_is_kept(tmp_path):
    """The rows go first, then only the files they named: an instance the PACS sends
    again at that moment keeps its file and gets its study anew."""
    from node.config import load_settings
    from node.store.headers import InstanceHeader
    from node.store.database import Index
    from node.store.receiving import Receiver
    from node.store.retention import Retention
    from node.store.spool import Spool

    settings = load_settings(None, overrides={"node.data_dir": str(tmp_path / "data")}, env={})
    settings.data_dir.mkdir(parents=True)
    index = Index(settings.database_url)
    spool = Spool(settings.spool_dir)
    receiver = Receiver(index, spool)

    def store(sop: str) -> None:
        header = InstanceHeader(study_uid="1.2.3", series_uid="1.2.3.4", sop_uid=sop,
                                sop_class_uid="1.2.840.10008.5.1.4.1.1.2", modality="CT")
        receiver.store(header, b"DICM" * 64, "1.2.840.10008.1.2.1", "CT1", 1)

    for n in range(3):
        store(f"1.2.3.4.{n}")
    receiver.association_closed(1)
    with index.engine.begin() as conn:  # complete, analysed long ago
        conn.exec_driver_sql("UPDATE series SET state = 'queued'")
    retention = Retention(settings, index, receiver.forget_series, receiver.lock)
    later = dt.datetime.utcnow() + dt.timedelta(days=settings.storage.retention_days + 1)

    original = retention._remove_rows

    def remove_rows_then_receive(*args):
        files = original(*args)
        store("1.2.3.4.99")  # arrives after the rows went, before the files go
        return files
    retention._remove_rows = remove_rows_then_receive
    removed = retention.run_once(now=later)
    assert removed.studies == ["1.2.3"] and removed.instances == 3
    left = sorted(p.name for p in (settings.spool_dir / "1.2.3").rglob("*.dcm"))
    assert left == ["1.2.3.4.99.dcm"]
    with index.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT sop_instance_uid, path FROM instances").all()
    assert [r[0] for r in rows] == ["1.2.3.4.99"]
    assert (settings.spool_dir / rows[0][1]).exists()
    index.close()


def test_a_study_removed_by_serve_is_received_again_by_another_process(tmp_path):
    """Retention runs in `serve`; a receiving process still remembers the series it stored
    (its id and version). The study sent again after its removal is stored anew, and never
    into another series that SQLite gave the removed id to (CI failure: 0xC211)."""
    from node.config import load_settings
    from node.store.headers import InstanceHeader
    from node.store.database import Index
    from node.store.receiving import Receiver
    from node.store.retention import Retention
    from node.store.spool import Spool

    settings = load_settings(None, overrides={"node.data_dir": str(tmp_path / "data")}, env={})
    settings.data_dir.mkdir(parents=True)
    index = Index(settings.database_url)
    in_serve = Receiver(index, Spool(settings.spool_dir), name="node/serve")
    in_receiver = Receiver(index, Spool(settings.spool_dir), name="node/receiver")

    def store(receiver: Receiver, series: str, sop: str, assoc: int):
        header = InstanceHeader(study_uid=series.rsplit(".", 1)[0], series_uid=series,
                                sop_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                                modality="CT")
        return receiver.store(header, b"DICM" * 64, "1.2.840.10008.1.2.1", "CT1", assoc)

    first = [store(in_receiver, "1.2.3.4", f"1.2.3.4.{n}", 1) for n in range(3)]
    in_receiver.association_closed(1)
    with index.engine.begin() as conn:  # complete, analysed long ago
        conn.exec_driver_sql("UPDATE series SET state = 'queued'")
    retention = Retention(settings, index, in_serve.forget_series, in_serve.lock)
    later = dt.datetime.utcnow() + dt.timedelta(days=settings.storage.retention_days + 1)
    assert retention.run_once(now=later).studies == ["1.2.3"]

    # Another series takes the removed series' id (SQLite reuses the highest rowid).
    other = store(in_serve, "5.6.7.8", "5.6.7.8.1", 2)
    assert other.series_id == first[0].series_id
    again = [store(in_receiver, "1.2.3.4", f"1.2.3.4.{n}", 3) for n in range(3)]
    assert all(r.stored and r.series_version == 1 for r in again)
    assert again[0].series_id != other.series_id
    with index.engine.connect() as conn:
        counts = dict(conn.exec_driver_sql("SELECT series_uid, instance_count FROM series").all())
        held = conn.exec_driver_sql(
            "SELECT s.series_uid, count(*) FROM instances i JOIN series s ON s.id = i.series_id "
            "GROUP BY s.series_uid").all()
    assert counts == {"5.6.7.8": 1, "1.2.3.4": 3} and dict(held) == counts
    index.close()


def test_low_disk_removes_the_oldest_studies_early_and_nothing_in_flight(tmp_path):
    from node.store import jobs
    from node.config import load_settings
    from node.store.headers import InstanceHeader
    from node.store.database import Index, Job, JobState, Series, Study
    from node.store.receiving import Receiver
    from node.store.retention import Retention
    from node.store.spool import Spool

    settings = load_settings(None, overrides={"node.data_dir": str(tmp_path / "data")}, env={})
    settings.data_dir.mkdir(parents=True)
    index = Index(settings.database_url)
    receiver = Receiver(index, Spool(settings.spool_dir))
    now = dt.datetime.utcnow()
    ages = {"1.1": dt.timedelta(days=1), "1.2": dt.timedelta(days=3), "1.3": dt.timedelta(days=2),
            "1.4": dt.timedelta(days=4),  # the oldest, but its job is running
            "1.5": dt.timedelta(minutes=30)}  # too recent even for low disk
    for n, study in enumerate(ages):
        header = InstanceHeader(study_uid=study, series_uid=f"{study}.9", sop_uid=f"{study}.9.1",
                                sop_class_uid="1.2.840.10008.5.1.4.1.1.2", modality="CT")
        receiver.store(header, b"DICM" * 64, "1.2.840.10008.1.2.1", "CT1", n)
        receiver.association_closed(n)
    with index.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE series SET state = 'queued'")
        for study, age in ages.items():
            conn.exec_driver_sql("UPDATE instances SET received_at = ? WHERE sop_instance_uid = ?",
                                 ((now - age).strftime("%Y-%m-%d %H:%M:%S.%f"), f"{study}.9.1"))
    with index.session() as session, session.begin():
        series = session.execute(select(Series).where(Series.series_uid == "1.4.9")).scalar_one()
        session.add(Job(series_id=series.id, series_version=1, state=JobState.RUNNING.value,
                        worker=jobs.worker_name("serve", 1)))

    def studies() -> list[str]:
        with index.session() as session:
            return sorted(session.execute(select(Study.study_uid)).scalars())

    mark = settings.storage.purge_below_free_mb * 2**20
    low = {"until": 3}  # free space is low while more than this many studies are held
    retention = Retention(settings, index, receiver.forget_series, receiver.lock,
                          free_bytes=lambda: mark - 1 if len(studies()) > low["until"] else mark)
    assert retention.run_once(now=now).studies == []  # none past the 7 days
    assert retention.relieve_disk(now=now).studies == ["1.2", "1.3"]  # oldest first, then enough
    assert studies() == ["1.1", "1.4", "1.5"]
    low["until"] = 0  # the disk stays low: everything that may go, goes; nothing else
    assert retention.relieve_disk(now=now).studies == ["1.1"]
    assert studies() == ["1.4", "1.5"]
    assert not (settings.spool_dir / "1.2").exists() and (settings.spool_dir / "1.5").exists()
    index.close()
