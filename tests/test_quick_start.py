"""The README's quick start, run as written: `make run` in a checkout, then its commands
from another terminal, against that node. And the node's log stays readable: a job that
builds a SEG and an SR writes none of highdicom's INFO lines.

The checkout is a folder of its own (the repository's virtual environment, Makefile and
config/ linked in), so that the README's relative paths (`.venv/bin/...`, `data/...`) are
its own; `make run` is run with `-o install`, its install step being done already. The
README's ports, 11112 and 8080, are replaced by free ones (TRAUMA_NODE_DICOM_PORT and
TRAUMA_NODE_HTTP_PORT for the node), and `path/to/series` by a phantom series.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import httpx

from support.nodes import ROOT, free_port, wait_for


def quick_start() -> tuple[list[str], list[str]]:
    """The quick start's two shell blocks: what starts the node, and what is run against
    it "from another terminal"; comments and continuation lines dropped."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) == 2, blocks

    def commands(block: str) -> list[str]:
        lines = (line.split("#", 1)[0].strip() for line in block.splitlines())
        return [line for line in lines if line]

    return commands(blocks[0]), commands(blocks[1])


def test_the_readme_quick_start_runs_as_written(tmp_path, phantom_factory):
    setup, commands = quick_start()
    assert "make run" in setup
    assert any(c.startswith("curl") for c in commands)

    checkout = tmp_path / "trauma-node"
    checkout.mkdir()
    for name in (".venv", "Makefile", "config"):
        (checkout / name).symlink_to(ROOT / name)
    truth = phantom_factory("quick-start", slices=40, rows=128, cols=128,
                            pixel_spacing=(3.125, 3.125), blood="small")
    dicom_port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAUMA_NODE_")}
    env.update(TRAUMA_NODE_DICOM_PORT=str(dicom_port), TRAUMA_NODE_HTTP_PORT=str(http_port),
               TRAUMA_NODE_DICOM_BIND="127.0.0.1", TCP_NODELAY="1")
    log_path = tmp_path / "make-run.log"
    with open(log_path, "wb") as log:
        node = subprocess.Popen(["make", "-o", "install", "run"], cwd=checkout, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def up() -> bool:
            assert node.poll() is None, log_path.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1).is_success
            except httpx.HTTPError:
                return False
        wait_for(up, timeout=90, what="make run")
        wait_for(lambda: "DICOM SCP" in log_path.read_text(), timeout=30, what="the SCP")

        outputs = []
        for command in commands:
            command = (command.replace("path/to/series", str(truth.paths[0].parent))
                       .replace("11112", str(dicom_port)).replace("8080", str(http_port)))
            run = subprocess.run(["bash", "-c", command], cwd=checkout, env=env,
                                 capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, f"{command}: {run.stdout}{run.stderr}"
            outputs.append(run.stdout)
        assert "status 0x0000" in outputs[0]
        assert f"sent {len(truth.paths)}, failed 0" in outputs[1]
        studies = json.loads(outputs[-1])  # curl: the studies, not a 401's detail
        assert isinstance(studies, list), studies
        assert [s["study_uid"] for s in studies] == [truth.spec.study_uid]
        assert re.search(r"generated one and stored it in \S*/data/api_token", log_path.read_text())

        # The series is analysed: its SEG and SR are built by a worker of that node.
        token = (checkout / "data" / "api_token").read_text().strip()

        def job_done() -> bool:
            answer = httpx.get(f"http://127.0.0.1:{http_port}/studies", timeout=10,
                               headers={"Authorization": f"Bearer {token}"}).json()
            jobs = [j for s in answer[0]["series"] for j in s["jobs"]]
            assert all(j["state"] != "failed" for j in jobs), jobs
            return bool(jobs) and all(j["state"] == "done" for j in jobs)
        wait_for(job_done, timeout=240, interval=1, what="the job")
        results = list((checkout / "data" / "results").rglob("seg.dcm"))
        assert results and list((checkout / "data" / "results").rglob("sr.dcm"))
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=60)

    log = log_path.read_text()
    assert re.search(r"job \d+ done in", log), log
    assert [line for line in log.splitlines() if "highdicom" in line] == []
    assert [line for line in log.splitlines() if " INFO alembic" in line] == []
    assert not (Path(checkout) / "data").is_symlink()
