"""The node as a real process (NodeProcess), and what the tests share to talk to it."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import httpx
import pydicom

from node.config import WorkersSection

TESTS = Path(__file__).resolve().parent.parent

ROOT = TESTS.parent
API_TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
# DCMTK on loopback: without TCP_NODELAY, Nagle plus delayed ACK costs ~40 ms per object.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.1,
             what: str = "condition"):
    """Poll predicate until it returns something truthy; fail after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def storescu(paths: list[Path] | Path, port: int, called: str = "TRAUMA_AI",
             calling: str = "STORESCU", extra: list[str] | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
    """Send with DCMTK storescu by full path (not pynetdicom's script of the same name)."""
    targets = [str(p) for p in (paths if isinstance(paths, list) else [paths])]
    cmd = [STORESCU, "-aet", calling, "-aec", called, *(extra or []), "+sd", "+r",
           "127.0.0.1", str(port), *targets]
    result = subprocess.run(cmd, env=DCMTK_ENV, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


# Test nodes' workers hold a little memory (node.work.memory, exercised), not the
# default's 768 MB each; benchmarks run the node as installed (env=AS_INSTALLED).
TEST_SIZED = {"TRAUMA_NODE_WORKERS_HELD_MEMORY_MB": "64"}
AS_INSTALLED = {"TRAUMA_NODE_WORKERS_HELD_MEMORY_MB": str(WorkersSection().held_memory_mb)}


class NodeProcess:
    """`trauma-node serve` in a subprocess, on free loopback ports and its own data dir."""

    def __init__(self, tmp: Path, config: str = "", env: dict[str, str] | None = None,
                 new_session: bool = False):
        """new_session: its own process group (and session), as systemd starts it, so that
        a test can signal the whole group."""
        self.tmp = tmp
        self.new_session = new_session
        self.data_dir = tmp / "data"
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.config_path = tmp / "node.toml"
        self.config_path.write_text(config)
        self.log_path = tmp / "node.log"
        # Loopback only: the tests never listen on other interfaces.
        self.env = {**os.environ, "TRAUMA_NODE_API_TOKENS": API_TOKEN,
                    "TRAUMA_NODE_DICOM_BIND": "127.0.0.1", **TEST_SIZED, **(env or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, wait: bool = True) -> "NodeProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "serve", "--config", str(self.config_path),
             "--data-dir", str(self.data_dir), "--dicom-port", str(self.dicom_port),
             "--http-port", str(self.http_port)],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=self.new_session)
        if wait:
            wait_for(self._ready, timeout=60, what="node start-up")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log()}")
        try:
            healthy = httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
        return healthy and "DICOM SCP" in self.log()

    def assert_kept(self, truth, sops) -> set[str]:
        """Every acknowledged SOP Instance is in the index and whole in the spool; returns
        the SOP Instance UIDs indexed."""
        with sqlite3.connect(self.data_dir / "index.sqlite") as db:
            indexed = {row[0] for row in db.execute("SELECT sop_instance_uid FROM instances")}
        assert set(sops) <= indexed
        for sop in sops:
            path = (self.data_dir / "spool" / truth.spec.study_uid / truth.spec.series_uid /
                    f"{sop}.dcm")
            assert pydicom.dcmread(path).SOPInstanceUID == sop  # complete and readable
        return indexed

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def studies(self) -> list[dict]:
        response = httpx.get(f"{self.url}/studies", headers=AUTH, timeout=10)
        response.raise_for_status()
        return response.json()

    def series(self, series_uid: str) -> dict | None:
        for study in self.studies():
            for s in study["series"]:
                if s["series_uid"] == series_uid:
                    return s
        return None

    def wait_series_state(self, series_uid: str, states: set[str], timeout: float = 60.0) -> dict:
        def check():
            s = self.series(series_uid)
            return s if s and s["state"] in states else None
        return wait_for(check, timeout, what=f"series {series_uid} in {states}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        code = self.proc.returncode
        self.proc = None
        return code

# Fast completion for tests: the quiet period is still exercised, just short.
FAST = """
[completion]
quiet_period_s = 1.0
check_interval_s = 0.1
[selection]
min_slices = 10
[storage]
min_free_disk_mb = 10
"""

