#!/usr/bin/env python3
"""Soak: a busy trauma centre's day of CT traffic compressed into minutes.

    .venv/bin/python bench/soak.py [--studies 200] [--write-results]     (or: make bench-soak)
    .venv/bin/python bench/soak.py --quick                               (12 studies, ~3 min)
    .venv/bin/python bench/soak.py --reanalyse [--write-results]   (the last run's report again)

200 studies take 20 to 30 minutes on 2 cores: 15 of sending, then the queue's drain.

What it does, loopback only:

1. Templates (once, cached in bench/.cache/soak-templates-v1, gitignored): ten phantom
   series made with tests/support/phantom.py, 80 to 1,000 slices, most at a 256 x 256
   matrix (1.5625 mm pixels: a quarter of the pixels of a real 512 x 512 study, to keep
   disk and time in bounds), one at 512 x 512; Explicit VR Little Endian, RLE Lossless,
   JPEG-LS Lossless (pydicom's encoders) and JPEG Lossless SV1 (DCMTK dcmcjpeg); two
   Legacy Converted Enhanced CT multi-frame series (highdicom). Every UID in a template
   has the fixed-length form 2.25.<MAGIC><template number><kind><counter>, so that a
   study is made from a template by replacing the template's number with the study's in
   the file's bytes (same length, no re-encoding): new Study, Series, SOP Instance and
   Frame of Reference UIDs for each study at the cost of a copy.
2. A real Orthanc (tests/support/orthanc.py) as the destination PACS and `trauma-node
   serve` (tests/support/nodes.py NodeProcess) delivering SEG and SR to it, with
   retention on (a study leaves the node --retention-s after its last image once its
   results are delivered: disk stays bounded, as on a node that runs for years).
3. --studies studies (default 200) of the templates' mix arrive over --duration seconds
   (default 4.5 s a study) at random times, with a mass-casualty burst of 15 % of them
   at 55-60 % of the way; four senders (DCMTK /usr/bin/storescu, TCP_NODELAY=1, calling
   AE titles CT1..CT4) take the next study as soon as its time has come and they are
   free, re-sending a study whose association failed (node down, aborted) until it goes
   through, as a PACS's forwarding queue does.
4. Disruptions: the destination Orthanc is stopped and started again twice (at 20 % and
   70 % of the way, for min(40 s, 12 % of the duration) each), and the node is restarted
   once (SIGTERM at 45 %, then `serve` again on the same data directory and ports).
5. Every second: the index (node/store/tables.py, read-only queries on the SQLite file:
   the oldest queued job's age, the oldest undelivered result's age, the backlog, and
   the rows of series, jobs and outbox, kept as last seen since retention removes them),
   and the resident memory (RSS) and CPU time of every process of the node (serve and
   its children: workers named by the index's workers table) with psutil, and the
   machine's CPU use.
6. When the senders are done and the node has drained: every study received (its series
   held every instance sent), analysed once (one job done per series version) and
   delivered once (one SEG and one SR per delivered series version in the outbox and in
   Orthanc; Orthanc's Lua filter lists every C-STORE it received, second copies
   included); dead letters; memory flatness per process (the median RSS of the last
   quarter of its loaded life against that of the second quarter, the first being
   warm-up; bound: +15 % or +50 MB, whichever is larger); CPU use.
7. A plot (bench/soak.png) of queue age and memory over time, and with --write-results
   the section "A day of traffic (soak)" of bench/RESULTS.md. Raw samples and the
   summary go to bench/.cache/soak-run/ (samples.json, summary.json).

The node runs its embedded CPU baseline (no model weights), with the default
configuration except: --workers analysis processes (default 2, one per core of this
machine; the node's default is 1), incomplete_hold_s 60 (default 300),
delivery.max_delay_s 60 (default 300), retention as above, checked every 30 s.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from results_md import replace_section  # noqa: E402  (bench/ is the script's folder)
import psutil
import pydicom
from pydicom.uid import (ExplicitVRLittleEndian, JPEGLosslessSV1, JPEGLSLossless,
                         RLELossless)

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT / "tests"))

from support.nodes import AS_INSTALLED, DCMTK_ENV, STORESCU, NodeProcess, free_port  # noqa: E402
from support.orthanc import Orthanc  # noqa: E402
from support.phantom import PhantomSpec, write_enhanced_series, write_series  # noqa: E402

RESULTS = BENCH / "RESULTS.md"
SECTION = "## A day of traffic (soak)"
TEMPLATES_VERSION = 1
TEMPLATES = BENCH / ".cache" / f"soak-templates-v{TEMPLATES_VERSION}"
RUN_DIR = BENCH / ".cache" / "soak-run"
DEFAULT_PLOT = BENCH / "soak.png"

MAGIC = "271828182845"  # the fixed part of every UID the soak makes (2.25: UUID-derived root)
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
MB = 1024 * 1024
FLAT_PCT = 0.15
FLAT_MB = 50.0
OTHER = "other child (receiver)"
JUDGE_MIN_S = 600.0


def uid(number: int, kind: int, counter: int = 0) -> str:
    """Fixed length (30 characters): number is a template's or a study's."""
    return f"2.25.{MAGIC}{number:06d}{kind}{counter:06d}"


def token(number: int) -> bytes:
    return f"{MAGIC}{number:06d}".encode()


# -- the mix ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Template:
    name: str
    slices: int
    spacing_mm: float
    matrix: int
    syntax: str  # explicit | rle | jpeg-ls | jpeg-lossless
    enhanced: bool
    blood: str
    blush: bool
    weight: int  # studies of it in 200

    @property
    def number(self) -> int:
        return 900000 + [t.name for t in MIX].index(self.name)

    @property
    def label(self) -> str:
        kind = "Enhanced CT multi-frame" if self.enhanced else "CT single-frame"
        return f"{self.slices} x {self.matrix}², {self.spacing_mm} mm, {kind}, {self.syntax}"


SYNTAXES = {"explicit": ExplicitVRLittleEndian, "rle": RLELossless,
            "jpeg-ls": JPEGLSLossless, "jpeg-lossless": JPEGLosslessSV1}
# storescu proposes uncompressed syntaxes and a fixed list of SOP classes unless told:
# a compressed file needs its syntax proposed, an Enhanced CT file its SOP class (-R).
STORESCU_OPTIONS = {"explicit": [], "rle": ["-xr"], "jpeg-ls": ["-xt"], "jpeg-lossless": ["-xs"]}

MIX = [
    Template("t080", 80, 5.0, 256, "explicit", False, "none", False, 40),
    Template("t120-rle", 120, 3.0, 256, "rle", False, "small", False, 35),
    Template("t160-jpeg", 160, 3.0, 256, "jpeg-lossless", False, "none", False, 20),
    Template("t200", 200, 2.5, 256, "explicit", False, "large", True, 35),
    Template("t200-enh", 200, 2.5, 256, "explicit", True, "small", False, 15),
    Template("t300-jls", 300, 1.5, 256, "jpeg-ls", False, "small", False, 25),
    Template("t300-512", 300, 1.5, 512, "explicit", False, "large", True, 4),
    Template("t400-enh", 400, 1.25, 256, "explicit", True, "large", False, 8),
    Template("t500", 500, 1.0, 256, "explicit", False, "none", False, 12),
    Template("t1000", 1000, 0.5, 256, "explicit", False, "large", True, 6),
]


def _restamp_uids(ds: pydicom.Dataset, mapping: dict[str, str], fresh) -> None:
    """Every generated UID (pydicom's root, long) in ds and its sequences -> the template's."""
    def new(value: str) -> str:
        if value in mapping.values():
            return value
        if value not in mapping:
            if not (value.startswith("1.2.826.0.1.3680043.8.498.") and len(value) > 40):
                return value
            mapping[value] = fresh()
        return mapping[value]

    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _restamp_uids(item, mapping, fresh)
        elif elem.VR == "UI" and elem.value:
            if isinstance(elem.value, str):
                elem.value = new(elem.value)
            else:
                elem.value = [new(v) for v in elem.value]


def build_template(t: Template) -> dict:
    """Write the template once into the cache; returns its manifest."""
    out = TEMPLATES / t.name
    manifest = out / "manifest.json"
    if manifest.exists():
        return json.loads(manifest.read_text())
    shutil.rmtree(out, ignore_errors=True)
    staging = TEMPLATES / f".staging-{t.name}"
    shutil.rmtree(staging, ignore_errors=True)
    n = t.number
    spec = PhantomSpec(slices=t.slices, rows=t.matrix, cols=t.matrix,
                       pixel_spacing=(400.0 / t.matrix, 400.0 / t.matrix),
                       slice_spacing=t.spacing_mm, blood=t.blood, blush=t.blush,
                       seed=n % 100, transfer_syntax=SYNTAXES[t.syntax],
                       study_uid=uid(n, 1), series_uid=uid(n, 2),
                       frame_of_reference_uid=uid(n, 4),
                       series_description=f"ABD/PELVIS {t.spacing_mm}mm PV")
    if t.enhanced:
        truth = write_enhanced_series(spec, staging / "enhanced.dcm")
    else:
        truth = write_series(spec, staging)
    out.mkdir(parents=True)
    counter = iter(range(1, 1_000_000))
    mapping = {spec.study_uid: spec.study_uid, spec.series_uid: spec.series_uid,
               spec.frame_of_reference_uid: spec.frame_of_reference_uid}
    files = []
    for path in truth.paths:
        ds = pydicom.dcmread(path)
        _restamp_uids(ds, mapping, lambda: uid(n, 3, next(counter)))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = out / path.name
        ds.save_as(target, enforce_file_format=True)
        raw = target.read_bytes()
        assert raw.count(token(n)) >= 3, f"{target}: UIDs not restamped"
        files.append(path.name)
    shutil.rmtree(staging)
    info = {"name": t.name, "files": sorted(files), "instances": len(files),
            "images": t.slices, "bytes": sum((out / f).stat().st_size for f in files),
            "transfer_syntax": str(SYNTAXES[t.syntax])}
    manifest.write_text(json.dumps(info))
    return info


def plan_studies(n: int, duration: float, seed: int) -> list[dict]:
    """n studies from the mix (each template at least once when n allows), arrival times."""
    total = sum(t.weight for t in MIX)
    counts = {t.name: (1 if n >= len(MIX) else 0) for t in MIX}
    rest = n - sum(counts.values())
    shares = {t.name: t.weight / total * rest for t in MIX}
    for name in counts:
        counts[name] += int(shares[name])
    left = n - sum(counts.values())
    for name in sorted(shares, key=lambda k: shares[k] - int(shares[k]), reverse=True)[:left]:
        counts[name] += 1
    rng = random.Random(seed)
    names = [name for name, c in counts.items() for _ in range(c)]
    rng.shuffle(names)
    burst = int(round(0.15 * n)) if n >= 20 else 0
    times = sorted([rng.uniform(0, duration) for _ in range(n - burst)]
                   + [rng.uniform(0.55 * duration, 0.60 * duration) for _ in range(burst)])
    times[0] = 0.0
    return [{"study": i + 1, "template": name, "arrival_t": round(at, 2)}
            for i, (name, at) in enumerate(zip(names, times))]


# -- the run ------------------------------------------------------------------------------

def node_config(pacs_port: int, retention_s: float, workers: int) -> str:
    return f"""
[workers]
count = {workers}
[completion]
quiet_period_s = 5.0
incomplete_hold_s = 60.0
[storage]
min_free_disk_mb = 1024
retention_days = {retention_s / 86400.0!r}
retention_check_interval_s = 30.0
[delivery]
max_delay_s = 60.0
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs_port}
objects = ["seg", "sr"]
verify_interrupted = "c-find"
"""


def _parse_ts(value) -> dt.datetime | None:
    if value is None:
        return None
    return dt.datetime.fromisoformat(str(value))


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Recorder:
    """Samples the index and the node's processes every second (a thread)."""

    def __init__(self, node: NodeProcess, t0: float):
        self.node = node
        self.t0 = t0
        self.db = node.data_dir / "index.sqlite"
        self.samples: list[dict] = []
        self.series: dict[str, dict] = {}  # series UID -> last seen row
        self.jobs: dict[tuple[str, int], dict] = {}  # (series UID, version) -> last seen
        self.outbox: dict[tuple[str, str], dict] = {}  # (SOP UID, destination) -> last seen
        self.worker_pids: set[int] = set()
        self.procs: dict[int, psutil.Process] = {}
        self.prev_cpu: dict[int, tuple[float, float]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        psutil.cpu_percent(None)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.sample()
            except Exception as exc:  # a sample lost is no reason to stop sampling
                print(f"recorder: {exc!r}", file=sys.stderr, flush=True)
            self.stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))

    def _index(self, rec: dict) -> None:
        if not self.db.exists():
            return
        now = _utcnow()
        with contextlib.closing(sqlite3.connect(self.db, timeout=5)) as db:
            def age(query: str) -> tuple[int, float]:
                count, oldest = db.execute(query).fetchone()
                return count, ((now - _parse_ts(oldest)).total_seconds() if oldest else 0.0)
            rec["queued"], rec["queued_age"] = age(
                "SELECT count(*), min(created_at) FROM jobs WHERE state = 'queued'")
            rec["running"] = db.execute(
                "SELECT count(*) FROM jobs WHERE state = 'running'").fetchone()[0]
            rec["pending"], rec["pending_age"] = age(
                "SELECT count(*), min(created_at) FROM outbox WHERE state = 'pending'")
            rec["receiving"] = db.execute(
                "SELECT count(*) FROM series WHERE state = 'receiving'").fetchone()[0]
            rec["studies"] = db.execute("SELECT count(*) FROM studies").fetchone()[0]
            rec["instances"] = db.execute("SELECT count(*) FROM instances").fetchone()[0]
            series = db.execute(
                "SELECT st.study_uid, s.series_uid, s.version, s.state, s.instance_count, "
                "s.expected_count, s.skip_reason, s.incomplete_reason FROM series s "
                "JOIN studies st ON st.id = s.study_id").fetchall()
            jobs = db.execute(
                "SELECT s.series_uid, st.study_uid, j.series_version, j.state, j.attempts, "
                "j.created_at, j.started_at, j.finished_at, j.error, j.incomplete_reason "
                "FROM jobs j JOIN series s ON s.id = j.series_id "
                "JOIN studies st ON st.id = s.study_id").fetchall()
            outbox = db.execute(
                "SELECT sop_instance_uid, destination, study_uid, series_uid, series_version, "
                "kind, state, attempts, last_error, created_at, sent_at FROM outbox").fetchall()
            pids = {row[0] for row in db.execute("SELECT pid FROM workers")}
        seen = rec["t"]
        with self.lock:
            self.worker_pids |= pids
            for (study, s_uid, version, state, count, expected, skip, incomplete) in series:
                old = self.series.get(s_uid, {})
                self.series[s_uid] = {
                    "study_uid": study, "version": version, "state": state,
                    "instance_count": max(count or 0, old.get("instance_count", 0)),
                    "expected_count": expected, "skip_reason": skip,
                    "incomplete_reason": incomplete, "first_seen": old.get("first_seen", seen),
                    "last_seen": seen}
            for (s_uid, study, version, state, attempts, created, started, finished, error,
                 incomplete) in jobs:
                key = (s_uid, version)
                old = self.jobs.get(key, {})
                self.jobs[key] = {"study_uid": study, "state": state, "attempts": attempts,
                                  "max_attempts": max(attempts or 0, old.get("max_attempts", 0)),
                                  "created_at": created, "started_at": started,
                                  "finished_at": finished, "error": error,
                                  "incomplete_reason": incomplete, "last_seen": seen}
            for (sop, dest, study, s_uid, version, kind, state, attempts, error, created,
                 sent) in outbox:
                self.outbox[(sop, dest)] = {
                    "study_uid": study, "series_uid": s_uid, "series_version": version,
                    "kind": kind, "state": state, "attempts": attempts, "last_error": error,
                    "created_at": created, "sent_at": sent, "last_seen": seen}

    def _processes(self, rec: dict) -> None:
        proc = self.node.proc
        rec["procs"] = []
        if proc is None or proc.poll() is not None:
            return
        try:
            root = self.procs.get(proc.pid) or psutil.Process(proc.pid)
            self.procs[proc.pid] = root
            found = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            return
        now = time.monotonic()
        for p in found:
            p = self.procs.setdefault(p.pid, p)
            try:
                with p.oneshot():
                    rss = p.memory_info().rss
                    times = p.cpu_times()
                    cmdline = " ".join(p.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            cpu = times.user + times.system
            if p.pid == proc.pid:
                role = "serve"
            elif p.pid in self.worker_pids:
                role = "worker"
            elif "resource_tracker" in cmdline:
                role = "resource-tracker"
            else:
                role = "other child"
            prev = self.prev_cpu.get(p.pid)
            pct = (100.0 * (cpu - prev[1]) / (now - prev[0])) if prev and now > prev[0] else None
            self.prev_cpu[p.pid] = (now, cpu)
            rec["procs"].append({"pid": p.pid, "role": role, "rss_mb": rss / MB,
                                 "cpu_s": cpu, "cpu_pct": pct})

    def sample(self) -> None:
        rec: dict = {"t": round(time.monotonic() - self.t0, 2)}
        try:
            self._index(rec)
        except sqlite3.Error as exc:
            rec["index_error"] = str(exc)
        self._processes(rec)
        rec["machine_cpu_pct"] = psutil.cpu_percent(None) * (os.cpu_count() or 1)
        rec["load1"] = os.getloadavg()[0]
        rec["node_up"] = self.node.proc is not None and self.node.proc.poll() is None
        with self.lock:
            self.samples.append(rec)

    def snapshot(self) -> dict:
        with self.lock:
            return {"series": dict(self.series), "jobs": dict(self.jobs),
                    "outbox": dict(self.outbox), "last": self.samples[-1] if self.samples else {}}


@dataclass
class Send:
    study: int
    template: str
    arrival_t: float
    instances: int = 0
    images: int = 0
    bytes: int = 0
    sender: str = ""
    start_t: float | None = None
    end_t: float | None = None
    end_wall: float | None = None
    attempts: int = 0
    ok: bool = False
    errors: list[str] = field(default_factory=list)


class Senders:
    """Four DCMTK storescu senders pulling the next due study."""

    def __init__(self, plan: list[Send], manifests: dict[str, dict], workdir: Path,
                 node: NodeProcess, t0: float, count: int = 4, max_attempts: int = 80):
        self.plan = plan
        self.manifests = manifests
        self.workdir = workdir
        self.node = node
        self.t0 = t0
        self.count = count
        self.max_attempts = max_attempts
        self.next = 0
        self.lock = threading.Lock()
        self.abort = threading.Event()
        self.running: set[subprocess.Popen] = set()
        self.threads = [threading.Thread(target=self._run, args=(f"CT{k + 1}",),
                                         name=f"sender-{k + 1}", daemon=True)
                        for k in range(count)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join()

    def kill(self) -> None:
        self.abort.set()
        for p in list(self.running):
            with contextlib.suppress(OSError):
                p.kill()

    def _take(self) -> Send | None:
        with self.lock:
            if self.next >= len(self.plan):
                return None
            send = self.plan[self.next]
            self.next += 1
            return send

    def _stamp(self, send: Send) -> Path:
        """The template's files with the study's UIDs, in a folder of their own."""
        template = next(t for t in MIX if t.name == send.template)
        manifest = self.manifests[send.template]
        src = TEMPLATES / send.template
        out = self.workdir / "outgoing" / f"{send.study:06d}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        old, new = token(template.number), token(send.study)
        for name in manifest["files"]:
            (out / name).write_bytes((src / name).read_bytes().replace(old, new))
        first = pydicom.dcmread(out / manifest["files"][0], stop_before_pixels=True)
        assert first.StudyInstanceUID == uid(send.study, 1), "restamping failed"
        send.instances, send.images, send.bytes = (manifest["instances"], manifest["images"],
                                                   manifest["bytes"])
        return out

    def _run(self, calling: str) -> None:
        while not self.abort.is_set():
            send = self._take()
            if send is None:
                return
            wait = send.arrival_t - (time.monotonic() - self.t0)
            if wait > 0 and self.abort.wait(wait):
                return
            folder = self._stamp(send)
            template = next(t for t in MIX if t.name == send.template)
            options = STORESCU_OPTIONS[template.syntax] + (["-R"] if template.enhanced else [])
            send.sender = calling
            send.start_t = time.monotonic() - self.t0
            while not self.abort.is_set() and send.attempts < self.max_attempts:
                send.attempts += 1
                cmd = [STORESCU, "-aet", calling, "-aec", "TRAUMA_AI", *options, "+sd", "+r",
                       "127.0.0.1", str(self.node.dicom_port), str(folder)]
                p = subprocess.Popen(cmd, env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
                self.running.add(p)
                try:
                    _, err = p.communicate(timeout=900)
                except subprocess.TimeoutExpired:
                    p.kill()
                    _, err = p.communicate()
                self.running.discard(p)
                if p.returncode == 0 and "Store Failed" not in err:
                    send.ok = True
                    break
                send.errors.append(f"rc {p.returncode}: {err.strip().splitlines()[-1:]}")
                self.abort.wait(2.0)
            send.end_t = time.monotonic() - self.t0
            send.end_wall = time.time()
            print(f"[{send.end_t:7.1f} s] {calling} study {send.study:3d} {send.template:<13}"
                  f" {'ok' if send.ok else 'FAILED'} in {send.end_t - send.start_t:5.1f} s"
                  f" ({send.attempts} attempt{'s' if send.attempts > 1 else ''})", flush=True)
            shutil.rmtree(folder, ignore_errors=True)


def orthanc_holdings(pacs: Orthanc) -> dict[str, Counter]:
    """Study UID -> Counter of the modalities of the instances Orthanc holds."""
    studies = {s["ID"]: s["MainDicomTags"]["StudyInstanceUID"]
               for s in httpx.get(f"{pacs.url}/studies?expand", timeout=60).json()}
    held: dict[str, Counter] = defaultdict(Counter)
    for s in httpx.get(f"{pacs.url}/series?expand", timeout=60).json():
        held[studies[s["ParentStudy"]]][s["MainDicomTags"].get("Modality", "?")] += \
            len(s["Instances"])
    return held


def run(args) -> dict:
    manifests = {}
    for t in MIX:
        started = time.monotonic()
        manifests[t.name] = build_template(t)
        took = time.monotonic() - started
        if took > 1:
            print(f"template {t.name}: {manifests[t.name]['instances']} files in {took:.0f} s",
                  flush=True)
    plan = [Send(**s) for s in plan_studies(args.studies, args.duration, args.seed)]

    shutil.rmtree(RUN_DIR, ignore_errors=True)
    RUN_DIR.mkdir(parents=True)
    (RUN_DIR / "node").mkdir(parents=True, exist_ok=True)
    node = NodeProcess(RUN_DIR / "node", "", new_session=True, env=AS_INSTALLED)
    pacs = Orthanc(RUN_DIR / "orthanc", free_port(), free_port(),
                   modalities={"trauma": ["TRAUMA_AI", "127.0.0.1", node.dicom_port]})
    node.config_path.write_text(node_config(pacs.dicom_port, args.retention_s, args.workers))
    events: list[dict] = []
    t0 = time.monotonic()

    def event(what: str, **extra) -> None:
        events.append({"t": round(time.monotonic() - t0, 2), "event": what, **extra})
        print(f"[{events[-1]['t']:7.1f} s] {what} {extra or ''}", flush=True)

    pacs.start()
    node.start()
    event("node started")
    recorder = Recorder(node, t0)
    recorder.start()
    senders = Senders(plan, manifests, RUN_DIR, node, t0)
    senders.start()
    d = args.duration
    outage = min(40.0, 0.12 * d)
    try:
        for at, action in ((0.20 * d, "pacs"), (0.45 * d, "node"), (0.70 * d, "pacs")):
            time.sleep(max(0.0, at - (time.monotonic() - t0)))
            if action == "pacs":
                pacs.stop()
                event("Orthanc stopped")
                time.sleep(outage)
                pacs.start()
                event("Orthanc started")
            else:
                event("node SIGTERM")
                stopping = time.monotonic()
                code = node.stop(signal.SIGTERM, timeout=60)
                event("node exited", code=code, took_s=round(time.monotonic() - stopping, 1))
                node.start()
                event("node started")
        senders.join()
        event("senders done")
        # Drained: nothing receiving, queued, running or pending, and every study seen.
        deadline = time.monotonic() + args.drain_timeout
        wanted = {uid(s.study, 1) for s in plan if s.ok}
        quiet = 0
        while time.monotonic() < deadline:
            time.sleep(1.0)
            snap = recorder.snapshot()
            last = snap["last"]
            seen = {row["study_uid"] for row in snap["series"].values()}
            busy = (last.get("receiving", 1) or last.get("queued", 1) or last.get("running", 1)
                    or last.get("pending", 1))
            quiet = quiet + 1 if not busy and wanted <= seen else 0
            if quiet >= 5:
                break
        else:
            event("drain timed out")
        event("drained")
        time.sleep(2.0)
    finally:
        senders.kill()
        recorder.close()
        snap = recorder.snapshot()
        try:
            held = orthanc_holdings(pacs) if pacs.proc else {}
            receptions = pacs.receptions()
        except Exception as exc:
            print(f"Orthanc could not be read: {exc!r}", file=sys.stderr)
            held, receptions = {}, pacs.receptions()
        node_log = node.log()
        node.stop()
        pacs.stop()
    save_raw(plan, manifests, recorder.samples, snap, events, held, receptions, node_log)
    return analyse(args, plan, manifests, recorder.samples, snap, events, held, receptions,
                   node_log)


def save_raw(plan, manifests, samples, snap, events, held, receptions, node_log) -> None:
    """What the run saw, before anything is made of it (--reanalyse reads it back)."""
    raw = {"plan": [asdict(s) for s in plan], "manifests": manifests, "samples": samples,
           "series": snap["series"], "jobs": [[k[0], k[1], v] for k, v in snap["jobs"].items()],
           "outbox": [[k[0], k[1], v] for k, v in snap["outbox"].items()], "events": events,
           "held": {k: dict(v) for k, v in held.items()}, "receptions": receptions,
           "node_log_tail": node_log[-200_000:]}
    (RUN_DIR / "raw.json").write_text(json.dumps(raw, default=str))


def reanalyse(args) -> dict:
    if not (RUN_DIR / "raw.json").exists():  # a run of before raw.json: memory again only
        summary = json.loads((RUN_DIR / "summary.json").read_text())
        samples = json.loads((RUN_DIR / "samples.json").read_text())
        end_sending = next((e["t"] for e in summary["events"] if e["event"] == "senders done"),
                           samples[-1]["t"])
        summary["memory"] = memory_rows(samples, summary["last_job_t"], end_sending)
        judged = [r for r in summary["memory"] if r["flat"] is not None]
        summary["memory_flat"] = all(r["flat"] for r in judged) if judged else None
        (RUN_DIR / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        return summary
    raw = json.loads((RUN_DIR / "raw.json").read_text())
    snap = {"series": raw["series"], "jobs": {(a, b): v for a, b, v in raw["jobs"]},
            "outbox": {(a, b): v for a, b, v in raw["outbox"]}}
    return analyse(args, [Send(**s) for s in raw["plan"]], raw["manifests"], raw["samples"],
                   snap, raw["events"], {k: Counter(v) for k, v in raw["held"].items()},
                   raw["receptions"], raw["node_log_tail"])


# -- what it shows ------------------------------------------------------------------------

def _roles(samples: list[dict]) -> dict[int, str]:
    """pid -> role: a worker is known as one only once it has beaten (the workers table)."""
    roles: dict[int, str] = {}
    for s in samples:
        for p in s.get("procs", []):
            if roles.get(p["pid"]) in (None, "other child"):
                roles[p["pid"]] = p["role"]
    # serve's other children: its receiver processes (network.receivers), which nothing
    # outside the node can tell apart otherwise (multiprocessing spawn, no name).
    return {pid: OTHER if role == "other child" else role for pid, role in roles.items()}


def memory_rows(samples: list[dict], last_job_t: float, end_sending: float) -> list[dict]:
    """Memory and CPU per process. Flatness is judged over its life until the last job
    finished, for a life of at least JUDGE_MIN_S (a shorter one is mostly warm-up: a worker's
    RSS climbs until it has met the largest series of the mix)."""
    lives: dict[int, dict] = {}
    roles = _roles(samples)
    for s in samples:
        for p in s.get("procs", []):
            life = lives.setdefault(p["pid"], {"pid": p["pid"], "role": roles[p["pid"]],
                                               "t": [], "rss": [], "cpu_s": 0.0})
            life["t"].append(s["t"])
            life["rss"].append(p["rss_mb"])
            life["cpu_s"] = p["cpu_s"]
    memory = []
    for life in lives.values():
        window = [(t, r) for t, r in zip(life["t"], life["rss"]) if t <= last_job_t]
        rss = [r for _, r in window]
        at_end = [r for t, r in zip(life["t"], life["rss"]) if t <= end_sending]
        row = {"pid": life["pid"], "role": life["role"], "from_t": life["t"][0],
               "to_t": life["t"][-1], "samples": len(life["rss"]),
               "rss_start": life["rss"][0], "rss_end": life["rss"][-1],
               "rss_at_sending_end": at_end[-1] if at_end and life["t"][-1] > end_sending
               else None,
               "rss_max": max(life["rss"]), "cpu_s": life["cpu_s"],
               "cpu_mean_pct": (100.0 * life["cpu_s"] / max(1.0, life["t"][-1] - life["t"][0]))}
        if window and window[-1][0] - window[0][0] >= JUDGE_MIN_S:
            q = len(rss) // 4
            q2, q4 = _median(rss[q:2 * q]), _median(rss[3 * q:])
            bound = max(FLAT_MB, FLAT_PCT * q2)
            row.update(q2_median=q2, q4_median=q4, growth=q4 - q2, bound=bound,
                       flat=(q4 - q2) <= bound)
        else:
            row.update(flat=None)
        memory.append(row)
    memory.sort(key=lambda r: (r["from_t"], r["pid"]))
    return memory


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _pctl(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def analyse(args, plan: list[Send], manifests, samples, snap, events, held, receptions,
            node_log: str) -> dict:
    series_rows, jobs, outbox = snap["series"], snap["jobs"], snap["outbox"]
    by_study_series: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for s_uid, row in series_rows.items():
        by_study_series[row["study_uid"]].append((s_uid, row))
    final_series = {s_uid for s_uid, row in series_rows.items()
                    if row["last_seen"] >= samples[-1]["t"] - 3}
    copies = Counter(receptions)
    duplicates = {sop: n for sop, n in copies.items() if n > 1}

    problems: list[str] = []
    per_study = []
    for send in plan:
        study_uid = uid(send.study, 1)
        rows = by_study_series.get(study_uid, [])
        got = max((row["instance_count"] for _, row in rows), default=0)
        received = send.ok and got >= send.instances
        versions_done, versions_delivered, states = [], [], []
        for s_uid, row in rows:
            states.append(row["state"])
            for (j_series, version), job in jobs.items():
                if j_series != s_uid:
                    continue
                if job["state"] == "done":
                    versions_done.append((s_uid, version))
                    items = [o for o in outbox.values()
                             if o["series_uid"] == s_uid and o["series_version"] == version]
                    kinds = Counter(o["kind"] for o in items if o["state"] == "sent")
                    if items and all(o["state"] == "withdrawn" for o in items):
                        continue
                    versions_delivered.append((s_uid, version))
                    if kinds != Counter({"seg": 1, "sr": 1}):
                        problems.append(f"study {send.study}: series {s_uid} v{version}: "
                                        f"outbox sent {dict(kinds)}, states "
                                        f"{Counter(o['state'] for o in items)}")
                elif job["state"] == "failed":
                    problems.append(f"study {send.study}: job v{version} failed: {job['error']}")
        in_pacs = held.get(study_uid, Counter())
        n = len(versions_delivered)
        delivered_once = n >= 1 and in_pacs.get("SEG", 0) == n and in_pacs.get("SR", 0) == n
        if not send.ok:
            problems.append(f"study {send.study}: never acknowledged ({send.errors[-1:]})")
        elif not received:
            problems.append(f"study {send.study}: {got} of {send.instances} instances indexed")
        elif not versions_done:
            problems.append(f"study {send.study}: not analysed (series {states}, "
                            f"{[row.get('skip_reason') for _, row in rows]})")
        elif not delivered_once:
            problems.append(f"study {send.study}: {n} version(s) delivered by the outbox, "
                            f"Orthanc holds {dict(in_pacs)}")
        sent_at = [_parse_ts(o["sent_at"]) for o in outbox.values()
                   if o["study_uid"] == study_uid and o["state"] == "sent" and o["sent_at"]]
        turnaround = None
        if sent_at and send.end_wall:
            last = max(sent_at).replace(tzinfo=dt.timezone.utc).timestamp()
            turnaround = last - send.end_wall
        per_study.append({**asdict(send), "study_uid": study_uid, "indexed": got,
                          "received": received, "versions_done": len(versions_done),
                          "versions_delivered": n, "in_pacs": dict(in_pacs),
                          "delivered_once": delivered_once, "turnaround_s": turnaround})

    sent_ok = [s for s in per_study if s["ok"]]
    dead = [o for o in outbox.values() if o["state"] == "dead"]
    withdrawn = [o for o in outbox.values() if o["state"] == "withdrawn"]
    jobs_done = [j for j in jobs.values() if j["state"] == "done"]
    reruns = [j for j in jobs.values() if (j["max_attempts"] or 0) > 1]
    end_sending = next((e["t"] for e in events if e["event"] == "senders done"), samples[-1]["t"])
    loaded = [s for s in samples if s["t"] <= end_sending]
    q_ages = [s.get("queued_age", 0.0) for s in samples if "queued_age" in s]
    p_ages = [s.get("pending_age", 0.0) for s in samples if "pending_age" in s]

    last_job_t = max((s["t"] for s in samples if s.get("running") or s.get("queued")),
                     default=samples[-1]["t"])
    memory = memory_rows(samples, last_job_t, end_sending)
    flat_rows = [r for r in memory if r["flat"] is not None]
    machine_cpu = [s["machine_cpu_pct"] for s in loaded]

    turnarounds = [s["turnaround_s"] for s in per_study if s["turnaround_s"] is not None]
    summary = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                 capture_output=True, text=True).stdout.strip(),
        "machine": machine(),
        "args": {k: v for k, v in vars(args).items() if k != "plot"},
        "events": events,
        "studies": len(plan),
        "instances": sum(s.instances for s in plan),
        "images": sum(s.images for s in plan),
        "gbytes": sum(s.bytes for s in plan) / 1e9,
        "mix": {t.name: {"label": t.label, "studies": sum(1 for s in plan if s.template == t.name),
                         "bytes": manifests[t.name]["bytes"]} for t in MIX},
        "sending_s": end_sending,
        "run_s": samples[-1]["t"],
        "acknowledged": len(sent_ok),
        "resent": sum(1 for s in plan if s.attempts > 1),
        "send_attempts": sum(s.attempts for s in plan),
        "received": sum(1 for s in per_study if s["received"]),
        "analysed": sum(1 for s in per_study if s["versions_done"] >= 1),
        "series_versions_done": len(jobs_done),
        "studies_more_than_one_version": sum(1 for s in per_study if s["versions_done"] > 1),
        "jobs_rerun": len(reruns),
        # A job cut off by the stop goes back to the queue without counting an attempt.
        "jobs_cut_off_by_stop": node_log.count("cut off by the stop"),
        "jobs_failed": sum(1 for j in jobs.values() if j["state"] == "failed"),
        "delivered_once": sum(1 for s in per_study if s["delivered_once"]),
        "outbox_sent": sum(1 for o in outbox.values() if o["state"] == "sent"),
        "outbox_withdrawn": len(withdrawn),
        "dead_letters": len(dead),
        "orthanc_receptions": len(receptions),
        "orthanc_unique": len(copies),
        "duplicates": duplicates,
        "studies_removed_by_retention": len({r["study_uid"] for s_uid, r in series_rows.items()
                                             if s_uid not in final_series}),
        "queue_age_max": max(q_ages, default=0.0),
        "queue_age_median": _median(q_ages),
        "queue_age_p95": _pctl(q_ages, 0.95),
        "pending_age_max": max(p_ages, default=0.0),
        "pending_age_median": _median(p_ages),
        "queued_max": max((s.get("queued", 0) for s in samples), default=0),
        "turnaround_median": _median(turnarounds),
        "turnaround_p95": _pctl(turnarounds, 0.95),
        "turnaround_max": max(turnarounds, default=0.0),
        "machine_cpu_mean_pct": statistics.fmean(machine_cpu) if machine_cpu else 0.0,
        "load1_mean": statistics.fmean(s["load1"] for s in loaded) if loaded else 0.0,
        "last_job_t": last_job_t,
        "memory": memory,
        "memory_flat": all(r["flat"] for r in flat_rows) if flat_rows else None,
        "problems": problems,
        "node_log_errors": [line for line in node_log.splitlines()
                            if " ERROR " in line or "Traceback" in line][:20],
    }
    summary["verdict"] = (not problems and not duplicates and not dead
                          and summary["received"] == len(plan)
                          and summary["delivered_once"] == len(plan))
    (RUN_DIR / "samples.json").write_text(json.dumps(samples))
    (RUN_DIR / "studies.json").write_text(json.dumps(per_study, indent=1, default=str))
    (RUN_DIR / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def plot(summary: dict, samples: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s["t"] / 60 for s in samples]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(11, 10), sharex=True)

    def marks(ax) -> None:
        down = None
        for e in summary["events"]:
            if e["event"] == "Orthanc stopped":
                down = e["t"]
            elif e["event"] == "Orthanc started" and down is not None:
                ax.axvspan(down / 60, e["t"] / 60, color="tab:red", alpha=0.12, lw=0)
                down = None
            elif e["event"] == "node SIGTERM":
                ax.axvline(e["t"] / 60, color="black", ls="--", lw=1)
            elif e["event"] == "senders done":
                ax.axvline(e["t"] / 60, color="grey", ls=":", lw=1)

    ax1.plot(minutes, [s.get("queued_age", float("nan")) for s in samples],
             label="oldest queued job (s)", color="tab:blue")
    ax1.plot(minutes, [s.get("pending_age", float("nan")) for s in samples],
             label="oldest undelivered result (s)", color="tab:orange", alpha=0.8)
    ax1.set_ylabel("age (s)")
    twin = ax1.twinx()
    twin.step(minutes, [s.get("queued", float("nan")) for s in samples], where="post",
              color="tab:green", alpha=0.5, lw=1, label="jobs queued")
    twin.set_ylabel("jobs queued", color="tab:green")
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    ax1.set_title(f"Soak: {summary['studies']} studies, {summary['images']:,} images, "
                  f"4 senders; red: Orthanc down, dashed: node restart, dotted: sending ends",
                  fontsize=10)
    marks(ax1)

    colours = {"serve": "tab:blue", "worker": "tab:red", "resource-tracker": "tab:olive",
               OTHER: "tab:purple"}
    shown = set()
    by_pid: dict[int, tuple[str, list, list]] = {}
    roles = _roles(samples)
    for s in samples:
        for p in s.get("procs", []):
            role, ts, rss = by_pid.setdefault(p["pid"], (roles[p["pid"]], [], []))
            ts.append(s["t"] / 60)
            rss.append(p["rss_mb"])
    for pid, (role, ts, rss) in by_pid.items():
        ax2.plot(ts, rss, color=colours.get(role, "tab:purple"), lw=1.2,
                 label=None if role in shown else role)
        shown.add(role)
    total = [sum(p["rss_mb"] for p in s.get("procs", [])) or float("nan") for s in samples]
    ax2.plot(minutes, total, color="black", lw=0.8, label="all node processes (sum)")
    ax2.set_ylabel("RSS (MB)")
    ax2.legend(loc="upper left", fontsize=8)
    marks(ax2)

    for role, colour in colours.items():
        series = [sum(p["cpu_pct"] or 0.0 for p in s.get("procs", []) if roles[p["pid"]] == role)
                  if any(roles[p["pid"]] == role for p in s.get("procs", [])) else float("nan")
                  for s in samples]
        if any(v == v and v > 0 for v in series):
            ax3.plot(minutes, series, color=colour, lw=0.8,
                     label=f"{role} (sum)" if role == "worker" else role)
    ax3.plot(minutes, [s["machine_cpu_pct"] for s in samples], color="black", lw=0.6,
             alpha=0.4, label="whole machine (all agents)")
    ax3.set_ylabel("CPU (% of one core)")
    ax3.set_xlabel("minutes")
    ax3.legend(loc="upper left", fontsize=8)
    marks(ax3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    memory = psutil.virtual_memory().total / 2**30
    return (f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, "
            f"Python {platform.python_version()}")


def report(summary: dict, plot_path: Path) -> str:
    s = summary
    a = s["args"]
    quick = " --quick" if a.get("quick") else ""
    studies = "" if a["studies"] == 200 or quick else f" --studies {a['studies']}"
    spread = ("" if quick or a["duration"] == max(60.0, 4.5 * a["studies"])
              else f" --duration {a['duration']:g}")
    make = " (`make bench-soak`)" if not (quick or studies or spread) else ""
    lines = [SECTION, "",
             f"`.venv/bin/python bench/soak.py{quick}{studies}{spread} --write-results`{make}, "
             f"{s['date']}, commit {s['commit']}, {s['machine']}; the machine shared with other "
             f"work (mean load {s['load1_mean']:.1f}, whole-machine CPU "
             f"{s['machine_cpu_mean_pct']:.0f} % of one core during sending).", "",
             f"Load: {s['studies']} studies ({s['instances']:,} instances, {s['images']:,} "
             f"images, {s['gbytes']:.1f} GB) over {a['duration']:.0f} s (a mass-casualty burst of "
             "15 % of them at 55-60 %), four DCMTK storescu senders at once; the node on its "
             f"embedded CPU baseline with {a['workers']} worker processes (workers.count). "
             "Most at a 256 x 256 "
             "matrix (a quarter of the pixels of a 512 x 512 study) to keep disk and time in "
             "bounds; Orthanc stopped and started twice, the node restarted once (SIGTERM, "
             "`serve` again on the same data directory). Retention removed each study "
             f"{a['retention_s']:.0f} s after its last image once delivered.", "",
             "| template | studies | bytes each |", "| --- | --- | --- |"]
    for name, m in s["mix"].items():
        lines.append(f"| {m['label']} | {m['studies']} | {m['bytes'] / 1e6:.0f} MB |")
    lines += ["", "Timeline (s from start): " + "; ".join(
        f"{e['t']:.0f} {e['event']}" + (f" (exit {e['code']}, {e['took_s']} s)" if "code" in e else "")
        for e in s["events"]) + ".", ""]
    dup = sum(n - 1 for n in s["duplicates"].values())
    lines += ["| what | count |", "| --- | --- |",
              f"| studies sent / acknowledged | {s['studies']} / {s['acknowledged']} "
              f"({s['resent']} re-sent after a failed association, {s['send_attempts']} "
              "associations) |",
              f"| received whole (every instance indexed) | {s['received']} |",
              f"| analysed (a job done) | {s['analysed']} ({s['series_versions_done']} series "
              f"versions; {s['studies_more_than_one_version']} studies with a second version; "
              f"{s.get('jobs_cut_off_by_stop', 'n/a')} jobs cut off by the restart and run again; "
              f"{s['jobs_rerun']} with a counted second attempt; {s['jobs_failed']} failed) |",
              f"| delivered once (one SEG and one SR per delivered version, in the outbox and "
              f"in Orthanc) | {s['delivered_once']} |",
              f"| results held and withdrawn (a later version replaced them) | "
              f"{s['outbox_withdrawn']} objects |",
              f"| second copies received by Orthanc | {dup} ({s['orthanc_receptions']} "
              f"C-STOREs, {s['orthanc_unique']} SOP Instances) |",
              f"| dead letters | {s['dead_letters']} |",
              f"| studies removed by retention during the run | "
              f"{s['studies_removed_by_retention']} |", "",
              f"Queue (oldest queued job, sampled each second): max {s['queue_age_max']:.1f} s, "
              f"median {s['queue_age_median']:.1f} s, p95 {s['queue_age_p95']:.1f} s; at most "
              f"{s['queued_max']} jobs queued. Oldest undelivered result: max "
              f"{s['pending_age_max']:.1f} s (the Orthanc outages), median "
              f"{s['pending_age_median']:.1f} s. From a study's last instance acknowledged to "
              f"its SEG and SR in Orthanc: median {s['turnaround_median']:.1f} s, p95 "
              f"{s['turnaround_p95']:.1f} s, max {s['turnaround_max']:.1f} s.", "",
              f"Memory (RSS, MB) and CPU of every process of the node (serve; its receiver "
              f"process, network.receivers; its workers; multiprocessing's resource tracker). "
              f"Flat: over a process's life until the last job finished, the median of the last "
              f"quarter within max(+{FLAT_PCT:.0%}, +{FLAT_MB:.0f} MB) of the second quarter's "
              f"(the first is warm-up); judged for lives of {JUDGE_MIN_S:.0f} s or more, those "
              "that ran through the restart's second half (a shorter life is mostly warm-up: a "
              "worker's RSS climbs until it has met the largest series of the mix).", "",
              "| process | pid | alive (s) | start | at sending end | end | max | Q2 median | "
              "Q4 median | flat | CPU s | CPU mean |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in s["memory"]:
        flat = ("not judged (short life)" if r["flat"] is None else
                f"{'pass' if r['flat'] else 'FAIL'} ({r['growth']:+.0f} MB, bound "
                f"{r['bound']:.0f})")
        q2 = f"{r['q2_median']:.0f}" if r["flat"] is not None else "-"
        q4 = f"{r['q4_median']:.0f}" if r["flat"] is not None else "-"
        mid = r.get("rss_at_sending_end")
        mid = f"{mid:.0f}" if mid is not None else "-"
        lines.append(f"| {r['role']} | {r['pid']} | {r['from_t']:.0f}-{r['to_t']:.0f} | "
                     f"{r['rss_start']:.0f} | {mid} | {r['rss_end']:.0f} | {r['rss_max']:.0f} | "
                     f"{q2} | {q4} | {flat} | {r['cpu_s']:.0f} | {r['cpu_mean_pct']:.0f} % |")
    flat = {True: "pass", False: "FAIL", None: "not judged (no process lived long enough)"}
    lines += ["", f"Memory flat: **{flat[s['memory_flat']]}**. Every study "
              f"received, analysed once and delivered once: **{'pass' if s['verdict'] else 'FAIL'}**.",
              ""]
    if s["problems"]:
        lines += ["Problems found:", ""] + [f"- {p}" for p in s["problems"][:20]] + [""]
    rel = plot_path.relative_to(BENCH) if plot_path.is_relative_to(BENCH) else plot_path
    lines += [f"![soak: queue age, memory and CPU over time]({rel}) ({rel}: queue age and "
              "jobs queued, RSS per process, CPU per role over time)", ""]
    return "\n".join(lines)


def write_section(section: str) -> None:
    replace_section(SECTION, section, RESULTS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--quick", action="store_true",
                        help="12 studies over 60 s (for debugging)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds over which the studies arrive (default 4.5 s a study)")
    parser.add_argument("--retention-s", type=float, default=300.0,
                        help="a study leaves the node this long after its last image (0: kept)")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--workers", type=int, default=2,
                        help="analysis processes of serve (workers.count; the node's default is 1)")
    parser.add_argument("--drain-timeout", type=float, default=1800.0)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--write-results", action="store_true")
    parser.add_argument("--reanalyse", action="store_true",
                        help="make the report again from the last run's raw.json (same options)")
    args = parser.parse_args()
    # Stopped (kill, or Ctrl-C of a background run): the node and Orthanc are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.quick:
        args.studies = 12 if args.studies == 200 else args.studies
        args.duration = args.duration or 60.0
    args.duration = args.duration or max(60.0, 4.5 * args.studies)
    plot_path = args.plot or (BENCH / ".cache" / "soak-quick.png" if args.quick else DEFAULT_PLOT)

    summary = reanalyse(args) if args.reanalyse else run(args)
    samples = json.loads((RUN_DIR / "samples.json").read_text())
    plot(summary, samples, plot_path)
    text = report(summary, plot_path)
    print(text)
    if args.write_results:
        write_section(text)
    return 0 if summary["verdict"] and summary["memory_flat"] is not False else 1


if __name__ == "__main__":
    sys.exit(main())
