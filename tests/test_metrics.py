"""`GET /metrics`: what an IT admin's Prometheus scrapes, read back with Prometheus's
own parser (prometheus_client), from a node that received a study with storescu."""

from __future__ import annotations

import datetime as dt

import httpx
from prometheus_client.parser import text_string_to_metric_families

from conftest import AUTH, FAST, free_port, storescu, wait_for
from node import metrics
from node.index import Index, Job, JobState, Series, Study
from qa_support import BLEED, api_settings

PATIENT_NAME, PATIENT_ID = "PHANTOM^ABDOMEN", "PHANTOM-0001"  # tests/phantom.py


def figures_of(text: str) -> dict[str, dict[tuple, float]]:
    """{metric name: {sorted label items: value}}, as Prometheus parses the text."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def scrape(client: httpx.Client, url: str) -> dict[str, dict[tuple, float]]:
    response = client.get(f"{url}/metrics", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return figures_of(response.text)


def one(figures: dict, name: str, **labels: str) -> float:
    return figures[name][tuple(sorted(labels.items()))]


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
            return figures if one(figures, "trauma_node_deliveries", state="pending") == 2 else None
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
    assert one(figures, "trauma_node_oldest_queued_job_age_seconds") == 0
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
    figures = figures_of(metrics.render(index, settings, now=now))
    index.close()
    assert one(figures, "trauma_node_jobs", state="done") == 5
    assert one(figures, "trauma_node_recent_jobs", state="done") == 4
    assert one(figures, "trauma_node_recent_job_duration_seconds", quantile="0.5") == 8
    assert one(figures, "trauma_node_recent_job_duration_seconds", quantile="0.9") == 40
    assert one(figures, "trauma_node_recent_job_duration_seconds", quantile="1") == 40
    assert one(figures, "trauma_node_oldest_queued_job_age_seconds") == 300
    assert one(figures, "trauma_node_deliveries", state="dead") == 0  # known states always shown
    # Counted only by a serving node: absent from the database-only figures.
    assert "trauma_node_associations_accepted_total" not in figures
