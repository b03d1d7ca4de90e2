"""A worker process keeps its memory between jobs (node.work.memory): what a job freed is
still resident, ready for the next, instead of handed back to the operating system."""

from __future__ import annotations

import subprocess
import sys

import pytest

from node.config import load_settings
from node.settings_loader import ConfigError
from support.nodes import ROOT

# In a fresh process: hold (or not), then a job-sized array freed; resident MB before and after.
CHILD = """
import sys
import numpy as np
from node.work.memory import hold_memory

def resident_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024

held = hold_memory(int(sys.argv[1]))
before = resident_mb()
volume = np.ones(200 * 2**20, dtype=np.uint8)  # a 200 MB block, as a volume is
during = resident_mb()
del volume
print(int(held), before, during, resident_mb())
"""


def _run(held_mb: int) -> tuple[bool, int, int, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(held_mb)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split()
    held, before, during, after = map(int, out)
    return bool(held), before, during, after


def test_a_worker_keeps_what_a_job_freed_and_touches_its_reserve_at_start():
    held, before, during, after = _run(64)
    assert held
    assert before >= 64  # the reserve is resident from the start
    assert 110 <= during - before <= 160  # the block took the reserve, then grew the heap
    assert after >= during - 10  # freed, and still resident for the next job


def test_without_it_freed_memory_goes_back_as_usual():
    held, before, during, after = _run(0)
    assert not held
    assert during - before >= 190
    assert after <= before + 20  # handed back: the next job faults it in again


def test_held_memory_must_not_be_negative():
    with pytest.raises(ConfigError, match="workers.held_memory_mb: must not be negative"):
        load_settings(None, overrides={"workers.held_memory_mb": -1}, env={})
