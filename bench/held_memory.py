"""A worker that keeps its memory (workers.held_memory_mb) against one that hands it back.

    .venv/bin/python bench/held_memory.py [--idle 10] [--held 768] [--rounds 2]

The end-to-end phantom (300 slices of 512x512 at 2.5 mm, large hemoperitoneum and a
blush) is built once and pickled. Then for each setting, alternately, a fresh process
does what a worker does: node.work.memory.hold_memory(setting) at start, then loads the
volume and runs pipeline.run_volume: the first job, a second at once, and a third after
--idle seconds with nothing to do (a worker between series). Printed: the seconds of
each, and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import pickle, resource, sys, time
from node.work.memory import hold_memory
from pipeline.run import run_volume
from pipeline.settings import PipelineSettings
held, idle, path = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
hold_memory(held)
settings, times = PipelineSettings(), []
for when in ("first", "again", "after idle"):
    if when == "after idle":
        time.sleep(idle)
    with open(path, "rb") as fh:
        volume = pickle.load(fh)
    start = time.perf_counter()
    run_volume(volume, settings)
    times.append(time.perf_counter() - start)
    del volume
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(" ".join(f"{t:.3f}" for t in times), f"{peak:.0f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--held", type=int, default=768, help="MB held (the default's)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]
    from support.phantom import PhantomSpec

    from fidelity import phantom_volume

    volume, _ = phantom_volume(PhantomSpec(slices=300, blood="large", blush=True))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "volume.pickle"
        path.write_bytes(pickle.dumps(volume, protocol=pickle.HIGHEST_PROTOCOL))
        del volume
        print(f"load average {os.getloadavg()[0]:.1f}; run_volume seconds: first, again, "
              f"after {args.idle:g} s idle; peak RSS MB")
        for _ in range(args.rounds):
            for held in (0, args.held):
                out = subprocess.run([sys.executable, "-c", CHILD, str(held), str(args.idle),
                                      str(path)], cwd=ROOT, capture_output=True, text=True,
                                     check=True).stdout.split()
                print(f"held_memory_mb = {held:4d}: {' / '.join(out[:3])} s; {out[3]} MB",
                      flush=True)
        print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
