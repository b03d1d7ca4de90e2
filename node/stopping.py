"""Stopping `serve` and `worker` on SIGTERM or SIGINT, within node.stop_timeout_s.

systemd (KillMode=control-group), `kill -- -PGID` and Ctrl-C signal the whole process
group, so the worker processes get the signal at the same moment as their parent:
nothing here may wait on a child (or a multiprocessing primitive a child shares)
without a deadline. The orderly stop gets the time, its parts side by side; then the
process ends with os._exit, so that a thread still busy (a delivery cut off, say) cannot
hang or crash the interpreter's shutdown, and a watchdog ends it at the deadline whatever
still hangs. Nothing acknowledged is lost by that: an instance is in the spool and the
index before its Success, and a job cut off is requeued.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Callable

log = logging.getLogger("trauma_node.stop")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

STOP_RESERVE_S = 1.0  # of node.stop_timeout_s, kept for closing the database and exiting


def on_stop_signals(stopping: threading.Event) -> None:
    """SIGINT and SIGTERM set `stopping` at once (call from the main thread).

    Python runs a signal handler in the main thread only, between two bytecodes: one blocked
    in a long call into C, or one asleep while the kernel gave the signal to another thread,
    would run it late or never. The C-level handler also writes the signal's number to the
    wakeup fd, from whichever thread got it, and a thread of ours waits on that."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda *_: None)  # caught (not the default action); see watch

    def watch() -> None:
        while True:
            signum = os.read(read_end, 1)[0]
            if signum in STOP_SIGNALS:
                log.info("received %s (pid %d)", signal.Signals(signum).name, os.getpid())
                stopping.set()

    threading.Thread(target=watch, name="stop-signals", daemon=True).start()


def exit_now(code: int) -> None:
    """End the process at once: threads still busy would otherwise run on into the
    interpreter's shutdown (where a thread in a C extension can crash it)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(code)


def exit_by(deadline: float) -> None:
    """Watchdog: end the process at `deadline` (time.monotonic()) if it is still alive."""
    def watch() -> None:
        time.sleep(max(0.0, deadline - time.monotonic()))
        log.error("stopping took longer than node.stop_timeout_s: exiting now")
        exit_now(1)

    threading.Thread(target=watch, name="stop-watchdog", daemon=True).start()


def run_parallel(steps: dict[str, Callable[[], bool | None]], deadline: float) -> list[str]:
    """Run each stop step in a thread of its own, so that one slow part does not use up the
    others' time, and wait for them until `deadline`. A step returns False when what it
    stops was still busy when it gave up waiting. Returns the names of the busy parts."""
    done: dict[str, bool | None] = {}

    def run(name: str, step: Callable[[], bool | None]) -> None:
        done[name] = step()

    threads = {name: threading.Thread(target=run, args=(name, step), name=f"stop-{name}",
                                      daemon=True) for name, step in steps.items()}
    for thread in threads.values():
        thread.start()
    for thread in threads.values():
        thread.join(max(0.0, deadline - time.monotonic()))
    return [name for name in steps if name not in done or done[name] is False]
