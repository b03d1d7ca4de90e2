"""Faults for the node's processes in tests: on this PYTHONPATH, with

- TRAUMA_TEST_JOB_DELAY_S=N: every job waits N seconds before its analysis (a job to
  cut off by a stop);
- TRAUMA_TEST_KILL_SERIES=UID: a job of that series kills its worker process with
  SIGKILL, as the out-of-memory killer does.

node.job_step.run_job is wrapped when a worker first imports it; without these variables
nothing is changed.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import signal
import sys
import time

DELAY_S = float(os.environ.get("TRAUMA_TEST_JOB_DELAY_S") or 0)
KILL_SERIES = os.environ.get("TRAUMA_TEST_KILL_SERIES", "")


def _faulty(run_job):
    def run(settings, index, job, paths):
        if job.series_uid == KILL_SERIES:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(DELAY_S)
        return run_job(settings, index, job, paths)
    return run


class _WrapJobStep(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "node.job_step":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            module.run_job = _faulty(module.run_job)

        spec.loader.exec_module = exec_module
        return spec


if DELAY_S or KILL_SERIES:
    sys.meta_path.insert(0, _WrapJobStep())
