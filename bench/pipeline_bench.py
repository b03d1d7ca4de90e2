"""Pipeline benchmark: time and peak memory per stage on 100-, 300- and 1000-slice series.

    .venv/bin/python bench/pipeline_bench.py [--slices 100 300 1000] [--write-results]

Each series (512x512, portal-venous phantom with large hemoperitoneum and a
blush, 400 mm field of view) is written as DICOM files, then analysed in a
fresh Python process, so that the peak RSS belongs to that run alone. Memory
is sampled from /proc/self/statm every 2 ms in one run; times come from a
second run without the sampler (its thread competes for the GIL). "Peak" per
stage is the highest RSS seen while the stage ran, "added" is the overall peak
above the process's RSS before loading (interpreter and libraries).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Pipeline"
PAGE = os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """Highest resident set size seen since the last reset, sampled on a thread."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * PAGE

    def reset(self) -> None:
        self.peak = self.rss()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval_s)

    def __enter__(self) -> "RssSampler":
        self.reset()
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()


def measure(series_dir: Path, sample_memory: bool) -> dict:
    """Runs in the child process: the pipeline on one series, with memory per stage.

    The sampling thread competes for the GIL, so times come from a run without it.
    """
    from pipeline import run_series

    paths = sorted(series_dir.glob("*.dcm"))
    if not sample_memory:
        start = time.perf_counter()
        findings = run_series(paths)
        return {"total_s": time.perf_counter() - start,
                "seconds": {s.stage: s.seconds for s in findings.provenance.stages}}
    stage_peaks: dict[str, int] = {}
    with RssSampler() as sampler:
        baseline = sampler.rss()

        def observer(stage: str, event: str) -> None:
            if event == "start":
                sampler.reset()
            else:
                stage_peaks[stage] = max(sampler.peak, sampler.rss())

        findings = run_series(paths, observer=observer)
    return {
        "slices": len(paths),
        "baseline_mb": baseline / 2**20,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "int16_mb": findings.labels.size * 2 / 2**20,
        "stages": {s.stage: {"peak_mb": stage_peaks.get(s.stage, 0) / 2**20}
                   for s in findings.provenance.stages},
        "hemorrhage_ml": findings.volumes_ml["hemorrhage"],
        "active_extravasation_ml": findings.volumes_ml["active_extravasation"],
    }


def write_phantom(slices: int, out_dir: Path) -> dict:
    from support.phantom import PhantomSpec, write_series

    # The same 300 mm of anatomy whatever the slice count: thinner slices for more.
    spec = PhantomSpec(slices=slices, slice_spacing=300.0 / slices, blood="large", blush=True)
    truth = write_series(spec, out_dir)
    return truth.volumes_ml


def run_one(slices: int, workdir: Path) -> dict:
    series_dir = workdir / f"s{slices}"
    truth = write_phantom(slices, series_dir)

    def child(*flags: str) -> dict:
        done = subprocess.run([sys.executable, __file__, "--measure", str(series_dir), *flags],
                              capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    result = child("--memory")
    timing = child()
    result["total_s"] = timing["total_s"]
    for stage, seconds in timing["seconds"].items():
        result["stages"][stage]["seconds"] = seconds
    result["truth_ml"] = truth
    return result


def markdown(results: list[dict], load: float) -> str:
    stages = list(results[0]["stages"])
    lines = [
        SECTION, "",
        f"`bench/pipeline_bench.py`, embedded CPU baseline (no model weights), "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}. Phantom: 512x512 slices over the same 300 mm of abdomen "
        "(large hemoperitoneum + blush), so 3, 1 and 0.3 mm slices, read from DICOM files; every run "
        f"in a fresh process. Load average when it started: {load:.1f} (the cores were shared).", "",
        "| slices | total s | " + " | ".join(f"{s} s" for s in stages)
        + " | peak RSS MB | added MB | int16 volume MB | added / int16 |",
        "|" + " --- |" * (len(stages) + 6),
    ]
    for r in results:
        added = r["peak_mb"] - r["baseline_mb"]
        lines.append(f"| {r['slices']} | {r['total_s']:.2f} | "
                     + " | ".join(f"{r['stages'][s]['seconds']:.2f}" for s in stages)
                     + f" | {r['peak_mb']:.0f} | {added:.0f} | {r['int16_mb']:.0f} | {added / r['int16_mb']:.2f} |")
    lines += ["", "Peak RSS (MB) while each stage ran:", "",
              "| slices | " + " | ".join(stages) + " |", "|" + " --- |" * (len(stages) + 1)]
    for r in results:
        lines.append(f"| {r['slices']} | " + " | ".join(f"{r['stages'][s]['peak_mb']:.0f}" for s in stages) + " |")
    lines += ["", "Volumes found against the phantom's truth (mL):", "",
              "| slices | hemorrhage found | truth | active extravasation found | truth |",
              "| --- | --- | --- | --- | --- |"]
    for r in results:
        t = r["truth_ml"]
        lines.append(f"| {r['slices']} | {r['hemorrhage_ml']:.1f} | {t['hemorrhage']:.1f} | "
                     f"{r['active_extravasation_ml']:.2f} | {t['active_extravasation']:.2f} |")
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    """Replace (or add) the Pipeline section of RESULTS.md, leaving the others alone."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = old.find(SECTION + "\n")
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + (old[end + 1:] if end >= 0 else "")
    RESULTS.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--write-results", action="store_true", help="update bench/RESULTS.md")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # child process mode
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.memory)))
        return
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
        results = [run_one(n, Path(tmp)) for n in args.slices]
    text = markdown(results, load)
    print(text)
    if args.write_results:
        write_section(text)


if __name__ == "__main__":
    main()
