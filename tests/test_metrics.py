"""`GET /metrics`: what an IT admin's Prometheus scrapes, read back with Prometheus's
own parser (prometheus_client), from a node that received a study with storescu."""

from __future__ import annotations

import datetime as dt

import httpx

from support.nodes import AUTH, FAST, free_port, storescu, wait_for
from support.metrics_support import figures_of, one, scrape
from node import metrics
from node.store.database import Index, Instance, Job, JobState, Series, Study
from node.store.outbox import OutboxItem, OutboxState
from support.qa_support import BLEED, api_settings

PATIENT_NAME, PATIENT_ID = "PHANTOM^ABDOMEN", "PHANTOM-0001"  # tests/support/phantom.py


def test_a_node_that_received_a_study_reports_it(node_factory, phantom_factory):
    truth = phantom_factory("metrics-bleed", **BLEED)
    closed_port = free_port()  # a PACS that is down: the results wait in the outbox
    node = node_factory(FAST + f"""
[delivery]
base_delay_s = 60.0
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = {closed_port}
""")
    with httpx.Client(timeout=30) as client:
        before = scrape(client, node.url)
        assert one(before, "trauma_node_associations_accepted_total") == 0
        assert one(before, "trauma_node_series", state="receiving") == 0

        storescu(truth.paths, node.dicom_port)
        storescu(truth.paths[:3], node.dicom_port)  # sent again: stored once, answered Success
        refused = storescu(truth.paths[:1], node.dicom_port, called="NOT_US", check=False)
        assert refused.returncode != 0

        def delivered_or_waiting():
            figures = scrape(client, node.url)
            # SEG and SR are queued before the job's other outputs: wait for both.
            return figures if (one(figures, "trauma_node_deliveries", state="pending") == 2
                               and one(figures, "trauma_node_jobs", state="done") == 1) else None
        figures = wait_for(delivered_or_waiting, timeout=90, interval=0.3,
                           what="SEG and SR waiting for the PACS")

    n = len(truth.paths)
    assert one(figures, "trauma_node_associations_accepted_total") == 2
    assert one(figures, "trauma_node_associations_rejected_total", reason="called_ae") == 1
    assert one(figures, "trauma_node_associations_rejected_total", reason="calling_ae") == 0
    assert one(figures, "trauma_node_cstore_responses_total", outcome="stored") == n
    assert one(figures, "trauma_node_cstore_responses_total", outcome="duplicate") == 3
    assert one(figures, "trauma_node_cstore_responses_total", outcome="cannot_understand") == 0
    sent_bytes = sum(p.stat().st_size for p in truth.paths)
    # What is stored is the object as received: its data set as sent, with our file meta.
    assert 0.9 * sent_bytes < one(figures, "trauma_node_received_bytes_total") < 1.1 * sent_bytes
    assert one(figures, "trauma_node_associations_open") == 0
    assert one(figures, "trauma_node_studies") == 1
    assert one(figures, "trauma_node_instances") == n
    assert one(figures, "trauma_node_series", state="queued") == 1
    assert one(figures, "trauma_node_jobs", state="done") == 1
    assert one(figures, "trauma_node_jobs", state="failed") == 0
    assert one(figures, "trauma_node_recent_jobs", state="done") == 1
    median = one(figures, "trauma_node_recent_job_duration_seconds", quantile="0.5")
    assert 0 < median == one(figures, "trauma_node_recent_job_duration_seconds", quantile="1")
    assert one(figures, "trauma_node_oldest_pending_delivery_age_seconds") > 0
    assert "trauma_node_recent_turnaround_seconds" not in figures  # nothing delivered yet
    assert one(figures, "trauma_node_oldest_queued_job_age_seconds") == 0
    assert one(figures, "trauma_node_workers_alive", role="serve") == 1
    assert one(figures, "trauma_node_workers_alive", role="worker") == 0
    assert one(figures, "trauma_node_spool_free_bytes") > one(figures,
                                                              "trauma_node_spool_min_free_bytes")
    info = next(iter(figures["trauma_node_info"]))
    assert dict(info)["triage"] == "hu-baseline" and dict(info)["ae_title"] == "TRAUMA_AI"
    text = httpx.get(f"{node.url}/metrics", headers=AUTH).text
    for private in (PATIENT_NAME, PATIENT_ID, truth.spec.study_uid, truth.spec.series_uid,
                    "STORESCU"):
        assert private not in text


def test_metrics_need_the_token(node_factory):
    node = node_factory(FAST)
    assert httpx.get(f"{node.url}/metrics", timeout=10).status_code == 401


def test_queue_age_and_job_durations_from_the_database(tmp_path):
    (tmp_path / "data").mkdir()
    settings = api_settings(tmp_path / "data")
    index = Index(settings.database_url)
    now = dt.datetime(2026, 11, 23, 12, 0, 0)
    with index.session() as session, session.begin():
        study = Study(study_uid="1.2.3")
        series = [Series(study=study, series_uid=f"1.2.3.{i}", state="queued") for i in range(6)]
        session.add_all([study, *series])
        session.flush()
        for i, seconds in enumerate((4, 8, 12, 40)):  # done in the last 24 h
            session.add(Job(series_id=series[i].id, series_version=1, state=JobState.DONE.value,
                            started_at=now - dt.timedelta(hours=1, seconds=seconds),
                            finished_at=now - dt.timedelta(hours=1)))
        session.add(Job(series_id=series[4].id, series_version=1, state=JobState.DONE.value,
                        started_at=now - dt.timedelta(days=2, seconds=500),
                        finished_at=now - dt.timedelta(days=2)))  # outside the window
        session.add(Job(series_id=series[5].id, series_version=1, state=JobState.QUEUED.value,
                        created_at=now - dt.timedelta(minutes=5)))
        # Turnaround: last image received -> last object delivered, per series version.
        t0 = now - dt.timedelta(hours=2)

        def image(i: int, version: int, received: dt.datetime) -> Instance:
            return Instance(series_id=series[i].id,
                            sop_instance_uid=f"1.2.3.{i}.{version}.{received.timestamp():.0f}",
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2",
                            path="x.dcm", size_bytes=1, series_version=version, received_at=received)

        def sent(i: int, version: int, kind: str, at: dt.datetime | None) -> OutboxItem:
            return OutboxItem(study_uid="1.2.3", series_uid=f"1.2.3.{i}", series_version=version,
                              kind=kind, sop_instance_uid=f"1.2.9.{i}.{version}.{kind}",
                              path="x.dcm", destination="pacs", sent_at=at,
                              state=OutboxState.SENT.value if at else OutboxState.PENDING.value)
        session.add_all([
            image(0, 1, t0 - dt.timedelta(seconds=5)), image(0, 1, t0),
            sent(0, 1, "seg", t0 + dt.timedelta(seconds=20)),
            sent(0, 1, "sr", t0 + dt.timedelta(seconds=30)),  # 30 s
            image(1, 1, t0 - dt.timedelta(hours=1)), image(1, 2, t0),  # version 2: later images
            sent(1, 1, "sr", t0 - dt.timedelta(minutes=59)),  # 60 s, for version 1
            sent(1, 2, "sr", t0 + dt.timedelta(seconds=50)),  # 50 s
            image(2, 1, t0), sent(2, 1, "seg", t0 + dt.timedelta(seconds=9)),
            sent(2, 1, "sr", None),  # not all delivered: no turnaround yet
            image(3, 1, now - dt.timedelta(days=3)),
            sent(3, 1, "sr", now - dt.timedelta(days=2)),  # outside the window
        ])
    figures = figures_of(metrics.render(index, settings, now=now))
    index.close()
    assert one(figures, "trauma_node_jobs", state="done") == 5
    assert one(figures, "trauma_node_recent_jobs", state="done") == 4
    assert one(figures, "trauma_node_recent_job_duration_seconds", quantile="0.5") == 8
    assert one(figures, "trauma_node_recent_job_duration_seconds", quantile="0.9") == 40
    assert one(figures, "trauma_node_recent_job_duration_seconds", quantile="1") == 40
    assert one(figures, "trauma_node_oldest_queued_job_age_seconds") == 300
    assert one(figures, "trauma_node_deliveries", state="dead") == 0  # known states always shown
    assert [one(figures, "trauma_node_recent_turnaround_seconds", quantile=q)
            for q in ("0.5", "0.9", "1")] == [50, 60, 60]  # of 30, 50 and 60 s
    # Counted only by a serving node: absent from the database-only figures.
    assert "trauma_node_associations_accepted_total" not in figures
