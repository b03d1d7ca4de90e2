"""A node and a separate `trauma-node worker` sharing a PostgreSQL database and the data
directory: the layout of a GPU analysis host beside the receiving node (DESIGN.md,
"Queue"). Everything runs for real: Debian's PostgreSQL on loopback, storescu, the
HTTP API."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import highdicom as hd
import httpx

from support.nodes import AUTH, FAST, ROOT, storescu
from support.metrics_support import one, scrape
from support.postgres import PostgresServer
from support.qa_support import BLEED, ask


def test_a_worker_sharing_a_postgresql_database_analyses_what_the_node_receives(
        node_factory, phantom_factory):
    truth = phantom_factory("shared-db-bleed", **BLEED)
    uid = truth.spec.study_uid
    with PostgresServer() as pg:
        config = FAST.replace("[storage]\n", f'[storage]\ndatabase_url = "{pg.url}"\n') + """
[workers]
count = 0
"""
        node = node_factory(config)
        assert "workers.count = 0: this node runs no analysis" in node.log()
        storescu(truth.paths, node.dicom_port)
        # Received, complete and queued, but nobody analyses it yet.
        queued = node.wait_series_state(truth.spec.series_uid, {"queued"})
        assert [j["state"] for j in queued["jobs"]] == ["queued"]
        assert queued["instances"] == len(truth.paths)

        worker_log = node.tmp / "worker.log"
        with worker_log.open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "worker", "--config", str(node.config_path),
                 "--data-dir", str(node.data_dir), "--count", "1"],
                cwd=ROOT, env=node.env, stdout=log, stderr=subprocess.STDOUT)
            try:
                done = node.wait_series_state(truth.spec.series_uid, {"done"}, timeout=120)
                with httpx.Client(timeout=30) as client:  # its heartbeat, seen by the node
                    alive = scrape(client, node.url)
            finally:
                worker.send_signal(signal.SIGTERM)
                code = worker.wait(timeout=60)
        assert one(alive, "trauma_node_workers_alive", role="worker") == 1
        assert one(alive, "trauma_node_workers_alive", role="serve") == 0
        with httpx.Client(timeout=30) as client:  # gone at a clean stop
            assert one(scrape(client, node.url), "trauma_node_workers_alive", role="worker") == 0
        text = worker_log.read_text()
        assert code == 0, text
        assert "received SIGTERM" in text and text.rstrip().endswith("stopped")
        assert "SQLite" not in text  # no warning: the database is shared

        job = done["jobs"][-1]
        assert job["state"] == "done" and re.fullmatch(r"\S+/worker-1", job["worker"])
        status = subprocess.run(  # the admin's view, from the shared database
            [sys.executable, "-m", "node.cli", "status", "--config", str(node.config_path),
             "--data-dir", str(node.data_dir)],
            cwd=ROOT, env=node.env, capture_output=True, text=True, timeout=60)
        line = next(l for l in status.stdout.splitlines() if truth.spec.series_uid in l)
        assert f"{job['id']}:done" in line and job["worker"] in line
        outputs = job["result"]["outputs"]
        sr = hd.sr.srread(os.path.join(outputs["directory"], outputs["objects"]["sr"][0]))
        seg = hd.seg.segread(os.path.join(outputs["directory"], outputs["objects"]["seg"][0]))
        assert sr.StudyInstanceUID == seg.StudyInstanceUID == uid
        # The node serves what the worker found, and answers questions from it.
        with httpx.Client(timeout=30) as client:
            findings = client.get(f"{node.url}/studies/{uid}/findings", headers=AUTH).json()
            blood = findings["findings"]["volumes_ml"]["hemorrhage"]
            assert blood > 0
            answer, stored, _ = ask(client, node.url, uid, "How much blood is there?")
            assert f"{blood:.1f} mL" in answer and stored["state"] == "complete"
            conversation = client.get(f"{node.url}/studies/{uid}/conversation",
                                      headers=AUTH).json()["messages"]
            assert [m["role"] for m in conversation] == ["question", "answer"]
        node.stop()


def test_the_worker_command_needs_a_count(node_factory):
    node = node_factory(FAST + "\n[workers]\ncount = 0\n", start=False)
    result = subprocess.run(
        [sys.executable, "-m", "node.cli", "worker", "--config", str(node.config_path),
         "--data-dir", str(node.data_dir)],
        cwd=ROOT, env=node.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "give --count N" in result.stderr
