"""Receiving on every core (issue 14, point 1): `serve` and its receiving processes
accept on one socket. Associations at once spread over the processes, everything is
stored and counted once in `serve`'s /metrics, and a receiving process that dies is
replaced, the series it was receiving marked possibly incomplete."""

from __future__ import annotations

import os
import re
import signal
import threading

import httpx
import psutil

from support.metrics_support import one, scrape
from support.nodes import FAST, storescu, wait_for
from support.phantom import PhantomSpec, write_series

SMALL = dict(slices=40, rows=128, cols=128, pixel_spacing=(3.125, 3.125), slice_spacing=5.0)
THREE = FAST + "\n[network]\nreceivers = 3\n"


def _accepting_pids(log: str) -> list[int]:
    return [int(p) for p in re.findall(r"association accepted: .* \(process (\d+)\)", log)]


def _send_at_once(series: list, port: int) -> None:
    threads = [threading.Thread(target=storescu, args=(t.paths, port)) for t in series]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)


def test_associations_at_once_spread_over_the_receiving_processes(node_factory, tmp_path):
    node = node_factory(THREE)
    assert "receiving in 3 processes on one socket" in node.log()
    series = [write_series(PhantomSpec(**SMALL), tmp_path / f"s{n}") for n in range(6)]
    _send_at_once(series, node.dicom_port)
    for truth in series:
        node.wait_series_state(truth.spec.series_uid, {"queued", "done"}, timeout=60)
        assert node.series(truth.spec.series_uid)["instances"] == 40
    pids = _accepting_pids(node.log())
    assert len(pids) == 6
    assert len(set(pids)) >= 2, pids  # more than one process took associations
    with httpx.Client(timeout=30) as client:  # each process's counts reach serve's /metrics
        figures = wait_for(lambda: (lambda f: f if one(
            f, "trauma_node_cstore_responses_total", outcome="stored") == 240 else None)(
            scrape(client, node.url)), 10, what="every instance counted once")
    assert one(figures, "trauma_node_associations_accepted_total") == 6
    assert one(figures, "trauma_node_associations_open") == 0


def test_a_receiving_process_that_dies_is_replaced(node_factory, tmp_path):
    node = node_factory(THREE)
    wait_for(lambda: len(psutil.Process(node.proc.pid).children()) >= 3, 30,
             what="the receiving processes")
    first = [write_series(PhantomSpec(**SMALL), tmp_path / f"a{n}") for n in range(4)]
    _send_at_once(first, node.dicom_port)
    children = {p.pid for p in psutil.Process(node.proc.pid).children()}
    victims = sorted(set(_accepting_pids(node.log())) & children)
    assert victims, "no association reached a receiving process"
    os.kill(victims[0], signal.SIGKILL)
    wait_for(lambda: f"receiving process {victims[0]} ended" in node.log(), 15,
             what="the supervisor to notice")
    wait_for(lambda: len(psutil.Process(node.proc.pid).children()) >= len(children), 30,
             what="a new receiving process")
    again = [write_series(PhantomSpec(**SMALL), tmp_path / f"b{n}") for n in range(4)]
    _send_at_once(again, node.dicom_port)
    for truth in first + again:
        node.wait_series_state(truth.spec.series_uid, {"queued", "done"}, timeout=60)
        assert node.series(truth.spec.series_uid)["instances"] == 40
    assert victims[0] not in _accepting_pids(node.log()[node.log().index(
        f"receiving process {victims[0]} ended"):])
    assert node.stop() == 0
    assert "Traceback" not in node.log()
