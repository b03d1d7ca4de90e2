"""The anatomy stage alone (pipeline.anatomy.build_anatomy) on the end-to-end phantom.

    .venv/bin/python bench/anatomy_bench.py [--repeat 5] [--slices 300] [--pipeline DIR]

The phantom of bench/e2e_latency.py (300 slices of 512x512 at 2.5 mm: 750 mm
of z, large hemoperitoneum and a blush) is built in memory; build_anatomy runs
once to warm up, then --repeat times. Printed: wall and CPU seconds (min and
median) and the load average, as the machine is often shared. --pipeline: a
checkout whose pipeline package is timed instead (an older commit, from
`git archive`), to compare before and after on the same phantom.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--pipeline", type=Path, default=ROOT, help="checkout holding the pipeline package")
    args = parser.parse_args()
    sys.path[:0] = [str(args.pipeline.resolve()), str(ROOT / "tests"), str(ROOT / "bench")]
    from pipeline.anatomy import build_anatomy
    from pipeline.settings import PipelineSettings
    from support.phantom import PhantomSpec

    from fidelity import phantom_volume  # after pipeline: it puts this checkout first on the path

    volume, _ = phantom_volume(PhantomSpec(slices=args.slices, blood="large", blush=True))
    settings = PipelineSettings()
    load = os.getloadavg()[0]
    assert Path(sys.modules["pipeline"].__file__).parent.parent == args.pipeline.resolve()
    build_anatomy(volume, settings)
    wall, cpu = [], []
    for _ in range(args.repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        build_anatomy(volume, settings)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    print(f"build_anatomy, {args.slices} slices, pipeline {args.pipeline}: "
          f"wall min {min(wall):.3f} s, median {statistics.median(wall):.3f} s; "
          f"CPU min {min(cpu):.3f} s, median {statistics.median(cpu):.3f} s; "
          f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
