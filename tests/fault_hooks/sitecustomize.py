"""Faults for the node's processes in tests: on this PYTHONPATH, with

- TRAUMA_TEST_JOB_DELAY_S=N: every job waits N seconds before its analysis (a job to
  cut off by a stop);
- TRAUMA_TEST_KILL_SERIES=UID: a job of that series kills its worker process with
  SIGKILL, as the out-of-memory killer does;
- TRAUMA_TEST_ANSWER_DELAY_S=N: answers to questions stream one piece every N seconds;
- TRAUMA_TEST_RESULTS_FREE_FILE=PATH: while PATH exists, the disk that results are
  written to has as many bytes free as it says (a disk filling up, without filling one);
- TRAUMA_TEST_KILL_DELIVERY=acknowledged: the delivering process kills itself (SIGKILL)
  when a C-STORE was acknowledged, before the outbox records it sent; =started: once an
  attempt is recorded as started, before its C-STORE goes out.

The module concerned is changed when the process first imports it; without these
variables nothing is.
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
ANSWER_DELAY_S = float(os.environ.get("TRAUMA_TEST_ANSWER_DELAY_S") or 0)
RESULTS_FREE_FILE = os.environ.get("TRAUMA_TEST_RESULTS_FREE_FILE", "")
KILL_DELIVERY = os.environ.get("TRAUMA_TEST_KILL_DELIVERY", "")


def _faulty_jobs(module) -> None:
    run_job = module.run_job

    def run(settings, index, job, paths, *args):
        if job.series_uid == KILL_SERIES:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(DELAY_S)
        return run_job(settings, index, job, paths, *args)

    module.run_job = run


def _slow_answers(module) -> None:
    create_answerer = module.create_answerer

    def create(*args, **kwargs):
        answerer = create_answerer(*args, **kwargs)
        answer = answerer.answer

        def slowly(question):
            for piece in answer(question):
                time.sleep(ANSWER_DELAY_S)
                yield piece

        answerer.answer = slowly
        return answerer

    module.create_answerer = create


def _results_disk(module) -> None:
    disk_free_bytes = module.disk_free_bytes

    def free(path):
        try:
            with open(RESULTS_FREE_FILE) as told:
                return int(told.read())
        except FileNotFoundError:
            return disk_free_bytes(path)

    module.disk_free_bytes = free


def _killed_delivery(module) -> None:
    mark_started = module.mark_started

    def started_then_killed(index, item_id):
        mark_started(index, item_id)
        os.kill(os.getpid(), signal.SIGKILL)

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if KILL_DELIVERY == "started":
        module.mark_started = started_then_killed
    else:
        module.mark_sent = killed


PATCHES = {}
if DELAY_S or KILL_SERIES:
    PATCHES["node.work.job"] = _faulty_jobs
if ANSWER_DELAY_S:
    PATCHES["pipeline.registry"] = _slow_answers
if RESULTS_FREE_FILE:
    PATCHES["node.work.results"] = _results_disk
if KILL_DELIVERY:
    PATCHES["node.store.outbox"] = _killed_delivery


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        patch = PATCHES.pop(name, None)
        if patch is None:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            if PATCHES:
                sys.meta_path.insert(0, self)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


if PATCHES:
    sys.meta_path.insert(0, _PatchOnImport())
