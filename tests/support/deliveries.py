"""What the delivery tests share: outbox rows for a phantom's files, one delivery pass in a
process that kills itself (tests/fault_hooks), and the outbox rows' states."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

from support.nodes import ROOT, TESTS

# What delivers in a test: the node's own Delivery, as `serve` runs it.
DELIVER = ("from node.config import load_settings; from node.work.delivery import Delivery; "
           "from node.store.database import Index; s = load_settings('/dev/null'); "
           "Delivery(s, Index(s.database_url)).deliver_due()")


def outbox_rows(truth, destination: str = "pacs", kind: str = "sc") -> list[dict]:
    """One outbox row per file of a phantom series, for destination."""
    return [{"study_uid": truth.spec.study_uid, "series_uid": truth.spec.series_uid,
             "series_version": 1, "kind": kind, "sop_instance_uid": sop, "path": str(path),
             "destination": destination}
            for sop, path in zip(truth.sop_instance_uids, truth.paths)]


def killed_delivering(data_dir, destinations: str, when: str) -> None:
    """Runs one delivery pass in a process that SIGKILLs itself `when`: "acknowledged"
    (after the destination stored an object, before the outbox recorded it sent) or
    "started" (after the attempt was recorded as started, before it went out)."""
    env = {**os.environ, "PYTHONPATH": str(TESTS / "fault_hooks"),
           "TRAUMA_TEST_KILL_DELIVERY": when, "TRAUMA_NODE_DATA_DIR": str(data_dir),
           "TRAUMA_NODE_PEERS": "[]", "TRAUMA_NODE_DESTINATIONS": destinations}
    done = subprocess.run([sys.executable, "-c", DELIVER], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == -9, done.stderr


def in_doubt(data_dir) -> list[tuple[str, bool]]:
    """(state, whether an attempt is in doubt) of each outbox row, in order."""
    with sqlite3.connect(data_dir / "index.sqlite") as db:
        return [(state, started is not None) for state, started in db.execute(
            "SELECT state, attempt_started_at FROM outbox ORDER BY id")]
