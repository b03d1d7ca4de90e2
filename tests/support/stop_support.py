"""Stopping tests: processes signalled every way, side by side, and what they left."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from support.nodes import FAST, ROOT, TESTS, wait_for

STOP_S = 5.0  # node.stop_timeout_s here
MARGIN_S = 0.5  # how late the test may see the exit
CONFIG = FAST + f"[node]\nstop_timeout_s = {STOP_S}\n"
WAYS = [(signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGINT, False),
        (signal.SIGINT, True)]  # (signal, to the whole group)
SLOW_JOBS = {"PYTHONPATH": str(TESTS / "fault_hooks"), "TRAUMA_TEST_JOB_DELAY_S": "120"}


class WorkerProcess:
    """`trauma-node worker` in a session of its own, on a node's data directory."""

    def __init__(self, data_dir: Path, config: Path, log: Path, env: dict[str, str]):
        self.data_dir, self.config, self.log_path = data_dir, config, log
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "worker", "--config", str(self.config),
                 "--data-dir", str(self.data_dir), "--count", "1"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def stop_all(processes: list) -> list[float]:
    """Signal each process its way; seconds until each exited (it must, within the bound)."""
    sent = []
    for process, (sig, group) in zip(processes, WAYS):
        sent.append(time.monotonic())
        if group:
            os.killpg(process.proc.pid, sig)
        else:
            process.proc.send_signal(sig)
    ended: dict[int, float] = {}

    def all_ended() -> bool:
        for i, process in enumerate(processes):
            if i not in ended and process.proc.poll() is not None:
                ended[i] = time.monotonic() - sent[i]
        return len(ended) == len(processes)

    wait_for(all_ended, timeout=STOP_S + 30, interval=0.02, what="every process to exit")
    for i, process in enumerate(processes):
        sig, group = WAYS[i]
        way = f"{sig.name} to the {'group' if group else 'process'}"
        assert ended[i] <= STOP_S + MARGIN_S, f"{way}: {ended[i]:.1f} s"
        assert process.proc.returncode == 0, f"{way}: exit status {process.proc.returncode}"
        assert process.log().rstrip().endswith("stopped"), process.log()[-3000:]
        # Its worker processes ended with it.
        for pid in re.findall(r"started \(pid (\d+)\)", process.log()):
            assert wait_for(lambda: not _alive(int(pid)), timeout=3, what=f"worker {pid} gone")
    return [ended[i] for i in range(len(processes))]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def jobs_of(data_dir: Path) -> list[tuple]:
    with sqlite3.connect(data_dir / "index.sqlite") as db:
        return db.execute("SELECT state, attempts FROM jobs ORDER BY id").fetchall()


def assert_job_done(data_dir: Path) -> None:
    def ended():
        with sqlite3.connect(data_dir / "index.sqlite") as db:
            return db.execute("SELECT state, attempts, error FROM jobs WHERE state IN "
                              "('done', 'failed')").fetchall()
    assert wait_for(ended, timeout=120, what="the job to end") == [("done", 1, None)]


