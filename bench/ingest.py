#!/usr/bin/env python3
"""Ingest benchmark: how fast the node receives a CT series, beside DCMTK storescp and Orthanc.

    .venv/bin/python bench/ingest.py            (or: make bench)

What it does, loopback only, everything bounded by timeouts:

1. Makes (once, cached in bench/.cache, gitignored) five 300-slice 512x512
   phantom series with tests/support/phantom.py, each with its own study/series/SOP UIDs
   (Explicit VR Little Endian, ~152 MB per series).
2. For each repetition starts fresh receivers side by side, each with its
   own data directory in one temporary folder (same disk):
     - the node: `python -m node.cli serve` with a bench config (below),
     - node-fsync: the same with storage.fsync = true (power-loss safe, as
       Orthanc's default SyncStorageArea),
     - DCMTK storescp --fork (files only; --fork so that four associations
       are served at once, as the other two receivers do),
     - Orthanc (JSON config, loopback ports, its own storage and SQLite index).
   DCMTK and Orthanc run with TCP_NODELAY=1 in the environment.
3. Times DCMTK /usr/bin/storescu (TCP_NODELAY=1, +sd +r) sending
     one:  series 0 over one association,
     four: series 1-4 over four simultaneous associations (four storescu processes),
   into each receiver, in a rotating order. The time runs from starting the
   storescu processes until the last one exits, that is until the last instance
   was acknowledged; each receiver answers Success only once an instance is
   stored (the node: file renamed into the spool and its row committed).
   os.sync() runs before each measurement (not timed) so that writeback of the
   previous one does not land in the next.
4. Checks that every instance arrived: the node's GET /studies shows 300
   instances for each series sent, Orthanc's /statistics counts them, and
   storescp's output folder holds the files.
5. Prints the medians and writes the `## Ingest` section of bench/RESULTS.md.

The node's bench config skips every completed series (selection.min_slices is
set out of reach), so that no analysis job competes with receiving for the
CPU: the benchmark measures ingest (spool + index), as the peers do no
analysis either. Series completion still runs.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "RESULTS.md"
DEFAULT_CACHE = BENCH / ".cache"

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
ECHOSCU = "/usr/bin/echoscu"
ORTHANC = "/usr/sbin/Orthanc"
# DCMTK and Orthanc on loopback: without TCP_NODELAY, Nagle plus delayed ACK
# costs ~40 ms per object.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}

PHANTOM_VERSION = 1  # bump when the phantom generator changes in a way that matters
N_SERIES = 5  # series 0 for "one", 1-4 for "four"

NODE_CONFIG = """\
# trauma-node config for bench/ingest.py: loopback, ingest only.
[node]
dicom_bind = "127.0.0.1"
http_bind = "127.0.0.1"
log_level = "INFO"

[completion]
quiet_period_s = 2.0

[selection]
# Out of reach: every completed series is recorded as skipped, so no analysis
# job competes with receiving for the CPU during the benchmark.
min_slices = 1000000

[workers]
# No worker either: it would decode arriving series ahead of their job (workers.prefetch),
# analysis work on the same cores. Receiving alone is measured here.
count = 0
"""


# -- processes -------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if the benchmark dies (even by SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, timeout: float = 5.0, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last_error = exc
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}"
                       + (f" (last error: {last_error})" if last_error else ""))


def echo_ok(port: int, called: str) -> bool:
    result = subprocess.run([ECHOSCU, "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port)],
                            env=DCMTK_ENV, capture_output=True, timeout=10)
    return result.returncode == 0


@dataclass
class ReceiverProcess:
    """One receiver under test, running in its own folder on loopback ports."""

    name: str
    workdir: Path
    ae_title: str
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    sent: dict[str, int] = field(default_factory=dict)  # series UID -> instances sent

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self) -> None:
        cmd, env = self.command()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent)

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            return self.is_ready()
        wait_for(ready, 60, f"{self.name} start-up", interval=0.2)

    def is_ready(self) -> bool:
        return echo_ok(self.dicom_port, self.ae_title)

    def settle(self) -> None:
        """Wait until the receiver has finished with what it was sent (not timed)."""

    def verify(self) -> None:
        raise NotImplementedError

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        self.proc = None


class NodeReceiver(ReceiverProcess):
    fsync = False

    def command(self):
        config = self.workdir / "node.toml"
        # storage.fsync: the node fsyncs file, folder and database per instance,
        # as Orthanc 1.10 does for its files by default (SyncStorageArea).
        config.write_text(NODE_CONFIG + ("\n[storage]\nfsync = true\n" if self.fsync else ""))
        cmd = [sys.executable, "-m", "node.cli", "serve", "--config", str(config),
               "--data-dir", str(self.workdir / "data"), "--dicom-port", str(self.dicom_port),
               "--http-port", str(self.http_port)]
        return cmd, dict(os.environ)

    def is_ready(self) -> bool:
        health = http_json(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1)
        return health.get("status") == "ok" and "DICOM SCP" in self.log_tail(100000)

    def _token(self) -> str | None:
        """The API token the node generated at first start, if it uses one."""
        path = self.workdir / "data" / "api_token"
        return path.read_text().strip() if path.is_file() else None

    def _series(self) -> dict[str, dict]:
        studies = http_json(f"http://127.0.0.1:{self.http_port}/studies", timeout=30,
                            token=self._token())
        return {s["series_uid"]: s for study in studies for s in study["series"]}

    def settle(self) -> None:
        # Each series completes (here: is skipped) once all its images are in.
        def done() -> bool:
            series = self._series()
            return all(uid in series and series[uid]["state"] != "receiving"
                       for uid in self.sent)
        wait_for(done, 60, "node: series completion", interval=0.2)

    def verify(self) -> None:
        series = self._series()
        for uid, count in self.sent.items():
            got = series.get(uid, {}).get("instances")
            if got != count:
                raise RuntimeError(f"node indexed {got} instances of series {uid}, sent {count}")


class NodeFsyncReceiver(NodeReceiver):
    fsync = True


class StorescpReceiver(ReceiverProcess):
    def command(self):
        out = self.workdir / "files"
        out.mkdir(exist_ok=True)
        cmd = [STORESCP, "--fork", "-aet", self.ae_title, "-od", str(out), str(self.dicom_port)]
        return cmd, DCMTK_ENV

    def verify(self) -> None:
        files = sum(1 for _ in (self.workdir / "files").iterdir())
        expected = sum(self.sent.values())
        if files != expected:
            raise RuntimeError(f"storescp wrote {files} files, sent {expected}")


class OrthancReceiver(ReceiverProcess):
    def command(self):
        storage = self.workdir / "storage"
        config = {
            "Name": "trauma-node-bench",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "SaveJobs": False,
            "Plugins": [],
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return [ORTHANC, str(path)], DCMTK_ENV

    def is_ready(self) -> bool:
        http_json(f"http://127.0.0.1:{self.http_port}/system", timeout=1)
        return echo_ok(self.dicom_port, self.ae_title)

    def verify(self) -> None:
        stats = http_json(f"http://127.0.0.1:{self.http_port}/statistics", timeout=30)
        expected = sum(self.sent.values())
        if int(stats["CountInstances"]) != expected:
            raise RuntimeError(f"Orthanc holds {stats['CountInstances']} instances, "
                               f"sent {expected}")


# -- phantoms --------------------------------------------------------------------

def _write_one(args: tuple[int, int, str]) -> dict:
    index, slices, out = args
    sys.path.insert(0, str(ROOT / "tests"))
    from support.phantom import PhantomSpec, write_series  # noqa: PLC0415

    truth = write_series(PhantomSpec(slices=slices, seed=index), out)
    return {"series_uid": truth.spec.series_uid, "study_uid": truth.spec.study_uid,
            "instances": len(truth.paths)}


def phantoms(cache: Path, slices: int) -> list[tuple[Path, str, int]]:
    """The cached series: (folder, series UID, instances); made when missing."""
    root = cache / f"phantom-v{PHANTOM_VERSION}-{slices}x512"
    manifest = root / "manifest.json"
    if manifest.is_file():
        entries = json.loads(manifest.read_text())
        if len(entries) == N_SERIES and all(
                len(list((root / f"s{i}").glob("*.dcm"))) == e["instances"]
                for i, e in enumerate(entries)):
            return [(root / f"s{i}", e["series_uid"], e["instances"])
                    for i, e in enumerate(entries)]
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    print(f"making {N_SERIES} phantom series of {slices} slices in {root} (once) ...",
          flush=True)
    jobs = [(i, slices, str(root / f"s{i}")) for i in range(N_SERIES)]
    with ProcessPoolExecutor(max_workers=min(N_SERIES, os.cpu_count() or 1)) as pool:
        entries = list(pool.map(_write_one, jobs))
    manifest.write_text(json.dumps(entries, indent=2))
    return [(root / f"s{i}", e["series_uid"], e["instances"]) for i, e in enumerate(entries)]


# -- measuring -------------------------------------------------------------------

def send(receiver: ReceiverProcess, series: list[tuple[Path, str, int]],
         timeout: float) -> float:
    """storescu, one process (association) per series, all at once; seconds until the last exits."""
    procs = []
    started = time.perf_counter()
    for folder, _, _ in series:
        cmd = [STORESCU, "-aet", "BENCH", "-aec", receiver.ae_title, "+sd", "+r",
               "127.0.0.1", str(receiver.dicom_port), str(folder)]
        procs.append(subprocess.Popen(cmd, env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, preexec_fn=_die_with_parent))
    errors = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=max(1.0, timeout - (time.perf_counter() - started)))
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            errors.append(f"storescu timed out after {timeout:.0f} s")
            continue
        if proc.returncode != 0:
            errors.append(f"storescu exited {proc.returncode}: {err.decode(errors='replace')[-800:]}")
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"sending to {receiver.name} failed:\n" + "\n".join(errors)
                           + f"\n{receiver.name} log:\n{receiver.log_tail()}")
    for _, uid, count in series:
        receiver.sent[uid] = count
    return elapsed


def make_receivers(workdir: Path, names: list[str]) -> list[ReceiverProcess]:
    kinds = {"node": (NodeReceiver, "TRAUMA_AI"), "node-fsync": (NodeFsyncReceiver, "TRAUMA_AI"),
             "storescp": (StorescpReceiver, "STORESCP"), "orthanc": (OrthancReceiver, "ORTHANC")}
    return [kinds[n][0](n, workdir / n, kinds[n][1]) for n in names]


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def run(args: argparse.Namespace) -> dict:
    load_before = _loadavg()
    series = phantoms(args.cache, args.slices)
    cases = {"one": series[:1], "four": series[1:5]}
    cases = {name: cases[name] for name in args.cases}
    times: dict[tuple[str, str], list[float]] = {}
    args.cache.mkdir(parents=True, exist_ok=True)
    workroot = Path(tempfile.mkdtemp(prefix="ingest-run-", dir=args.cache))
    receivers: list[ReceiverProcess] = []
    try:
        for rep in range(args.repeat):
            repdir = workroot / f"rep{rep}"
            receivers = make_receivers(repdir, args.receivers)
            for r in receivers:
                r.start()
            for r in receivers:
                r.wait_ready()
            # The node's worker processes import the pipeline after the node is up:
            # let start-up work end before timing anything.
            time.sleep(args.settle)
            order = receivers[rep % len(receivers):] + receivers[:rep % len(receivers)]
            for case, case_series in cases.items():
                for r in order:
                    os.sync()
                    time.sleep(0.5)
                    seconds = send(r, case_series, args.timeout)
                    r.settle()
                    r.verify()
                    times.setdefault((r.name, case), []).append(seconds)
                    images = sum(n for _, _, n in case_series)
                    print(f"  rep {rep + 1}/{args.repeat}  {r.name:9s} {case:5s} "
                          f"{seconds:6.2f} s  {images / seconds:6.0f} images/s", flush=True)
            for r in receivers:
                r.stop()
            receivers = []
            shutil.rmtree(repdir, ignore_errors=True)
    finally:
        for r in receivers:
            try:
                r.stop()
            except Exception as exc:  # keep stopping the others
                print(f"stopping {r.name}: {exc}", file=sys.stderr)
        if args.keep:
            print(f"kept {workroot}")
        else:
            shutil.rmtree(workroot, ignore_errors=True)
    return {"times": times, "cases": {c: sum(n for _, _, n in s) for c, s in cases.items()},
            "series_per_case": {c: len(s) for c, s in cases.items()},
            "load": (load_before, _loadavg())}


# -- reporting -------------------------------------------------------------------

def _versions() -> dict[str, str]:
    def first_line(cmd: list[str], pattern: str) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            m = re.search(pattern, out.stdout + out.stderr)
            return m.group(1) if m else "?"
        except (OSError, subprocess.SubprocessError):
            return "?"
    import pydicom
    import pynetdicom
    return {
        "DCMTK": first_line([STORESCU, "--version"], r"storescu v(\S+)"),
        "Orthanc": first_line([ORTHANC, "--version"], r"Orthanc\s+(?:version:?\s*)?([0-9][\w.]*)"),
        "pynetdicom": pynetdicom.__version__,
        "pydicom": pydicom.__version__,
        "Python": platform.python_version(),
    }


def _machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    return f"{os.cpu_count()} CPUs (nproc), {model}{mem}, Linux {platform.release()}"


def table(result: dict, receivers: list[str]) -> tuple[str, list[str]]:
    times, images = result["times"], result["cases"]
    rows = ["| receiver | case | seconds (median) | images/s | runs (s) |",
            "| --- | --- | --- | --- | --- |"]
    rate: dict[tuple[str, str], float] = {}
    for case in images:
        for name in receivers:
            runs = times.get((name, case))
            if not runs:
                continue
            median = statistics.median(runs)
            rate[(name, case)] = images[case] / median
            label = {"one": f"one association, {images[case]} images",
                     "four": f"four associations, {images[case]} images"}[case]
            rows.append(f"| {name} | {label} | {median:.2f} | {rate[(name, case)]:.0f} | "
                        + ", ".join(f"{t:.2f}" for t in runs) + " |")
    ratios = []
    for case in images:
        node = rate.get(("node", case))
        if node is None:
            continue
        for peer in ("orthanc", "storescp"):
            if (peer, case) in rate:
                ratios.append(f"node/{peer} ({case}): {node / rate[(peer, case)]:.2f}x")
        if ("node-fsync", case) in rate and ("orthanc", case) in rate:
            ratios.append(f"node-fsync/orthanc ({case}): "
                          f"{rate[('node-fsync', case)] / rate[('orthanc', case)]:.2f}x")
    return "\n".join(rows), ratios


def write_results(text: str) -> None:
    """Replace the `## Ingest` section of RESULTS.md (or add it), keeping the rest."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(r"^## Ingest\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _: text.rstrip() + "\n\n", old, count=1)
    else:
        new = old.rstrip() + "\n\n" + text.rstrip() + "\n"
    RESULTS.write_text(new.rstrip() + "\n")


NOTES = """\
What the node's receive path does per instance, and what limits it (profiled
with py-spy and per-thread cProfile on the single-association case):

- Before: 77 images/s on one association, 72 on four (3.9 s and 16.7 s). Per
  instance, SQLAlchemy statement building for six statements in the index
  (~4.6 ms), pynetdicom's `encoded_dataset()` re-encoding the File Meta with
  pydicom (~1.7 ms), decoding the whole data set (~1.4 ms), and ~1 ms of
  1 ms-poll sleeps in pynetdicom's two reactor loops.
- Changed (node/store/receiving.py, node/store/database.py, node/store/spool.py, node/dicom/dataset_bytes.py,
  node/dicom/acceptor_choice.py, node/dicom/scp.py): the per-instance index work is one look-up and
  one transaction of an INSERT and a guarded UPDATE on the sqlite3 driver (series
  id/version cached in memory, re-checked by the UPDATE's WHERE); the header is
  parsed only up to Pixel Data and only for the tags `node/store/headers.py` uses; the
  File Meta is encoded by hand (byte-identical) and the data set is written from
  the receive buffer with one writev; series folders are cached. pynetdicom's
  acceptor (pinned 3.0.4) waits on select()/an Event instead of 1 ms sleeps,
  reads a PDU with recv_into, decodes C-STORE-RQ command sets and encodes
  C-STORE-RSP by hand, copies the presentation contexts without deepcopy
  (~90 ms per association) and skips pynetdicom's per-PDU log handlers.
  Still: Success only after rename + commit, nothing batched.
- Issue 14 (2026-11-30): receiving on every core and a shorter path per instance.
  `network.receivers` processes (0 = one per core, at most 4; here 2) accept on one
  listening socket bound by `serve` (node/dicom/receivers.py); the busier one waits
  a few ms before it accepts, so four associations land two and two. On one
  association: the complete C-STORE is served in the DUL thread (no hand-off to the
  association thread and back), a P-DATA-TF in the data transfer state is cut into
  its values by hand and handed to DIMSE (no PDU object, primitive, event queue or
  state-machine step), and the header of a plain little endian data set is walked
  with struct (0.15 ms instead of 0.6-1.2 ms through pydicom, the same header).
  Per instance, what remains in Python is the spool write (~0.3 ms with the 0.5 MB
  writev), SQLite (~0.2 ms), reading the PDUs (~0.3 ms) and the header; the rest of
  a storescu round trip is the kernel waking the sender. DCMTK storescp (C++, no
  index, no fsync) stays ahead. Orthanc 1.10 fsyncs every file by default
  (`SyncStorageArea`) and advertises 16 KB PDUs: compare it with node-fsync as
  well as with node.
- The machine is shared with other work (see the load average above): runs
  vary by up to 2x; compare ratios from the same run.
"""


def report(result: dict, args: argparse.Namespace, command: str) -> str:
    body, ratios = table(result, args.receivers)
    versions = ", ".join(f"{k} {v}" for k, v in _versions().items())
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    notes = args.notes.strip()
    lines = [
        "## Ingest",
        "",
        f"Command: `{command}` (or `make bench`), {now}.",
        f"Machine: {_machine()}; load average {result['load'][0]} before the run, "
        f"{result['load'][1]} after (other work on the machine shows here).",
        f"Software: {versions}.",
        "",
        f"DCMTK storescu (`TCP_NODELAY=1`, `+sd +r`, by full path) sends {args.slices}-slice "
        "512x512 phantom series (Explicit VR Little Endian, ~0.5 MB per image) on loopback: "
        "one series over one association, and four series over four simultaneous "
        "associations (four storescu processes). Seconds from starting storescu until the "
        "last one exits (last instance acknowledged); median of "
        f"{args.repeat} runs, fresh receivers for each run ({args.settle:.0f} s to settle after "
        "start-up), the receivers' order rotated between runs, `sync` before each "
        "measurement. "
        "Receivers run side by side, data directories on the same disk: the node "
        "(`trauma-node serve`, spool + SQLite index, every instance renamed into the spool "
        "and committed before Success; default `storage.fsync = false`, which survives a "
        "crash of the process; the bench config skips analysis of completed series and runs "
        "no worker, so that receiving alone is measured), "
        "`node-fsync` (the same with `storage.fsync = true`: file, folder and database "
        "fsynced per instance, power-loss safe, comparable with Orthanc's default), DCMTK "
        "storescp `--fork` (files only, no index, no fsync; `--fork` serves the four "
        "associations at once), Orthanc 1.10 (its own storage + SQLite index, defaults: "
        "`SyncStorageArea` true, i.e. an fsync per file, `MaximumPduLength` 16 KB). DCMTK "
        "and Orthanc run with `TCP_NODELAY=1`. Every instance is checked afterwards (node "
        "`/studies`, Orthanc `/statistics`, storescp files).",
        "",
        body,
        "",
        "Ratios of images/s: " + "; ".join(ratios) + "." if ratios else "",
    ]
    lines += ["", NOTES.rstrip()]
    if notes:
        lines += ["", notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--receivers", default="node,node-fsync,storescp,orthanc",
                   help="comma-separated: node, node-fsync (storage.fsync = true), storescp, "
                   "orthanc")
    p.add_argument("--cases", default="one,four", help="comma-separated: one, four")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                   help="phantoms and temporary data (default bench/.cache)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per send")
    p.add_argument("--settle", type=float, default=8.0,
                   help="seconds to wait after the receivers are up, before timing")
    p.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    p.add_argument("--keep", action="store_true", help="keep the receivers' data (debugging)")
    p.add_argument("--notes", default="", help="text appended to the RESULTS.md section")
    args = p.parse_args(argv)
    args.receivers = [r.strip() for r in args.receivers.split(",") if r.strip()]
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for tool in (STORESCU, STORESCP, ECHOSCU, ORTHANC):
        if not os.access(tool, os.X_OK):
            print(f"{tool} is missing: apt-get install dcmtk orthanc (or `make system-deps`)",
                  file=sys.stderr)
            return 2
    if not 1 <= args.repeat <= 20:
        p.error("--repeat: 1 to 20")

    def on_term(signum, _frame):  # noqa: ANN001
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)

    result = run(args)
    given = list(sys.argv[1:] if argv is None else argv)
    shown = []
    while given:
        arg = given.pop(0)
        if arg == "--notes":
            given = given[1:]
        elif not arg.startswith("--notes="):
            shown.append(arg)
    command = " ".join([".venv/bin/python bench/ingest.py", *shown]).strip()
    text = report(result, args, command)
    print()
    print(text)
    if not args.no_write:
        write_results(text)
        print(f"updated {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
