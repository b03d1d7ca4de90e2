"""Stopping `serve` in the middle of a delivery to a PACS slow to answer, with an answer
streaming: it still ends within node.stop_timeout_s, whichever way it is signalled, and
the delivery cut off is made at the next start."""

from __future__ import annotations

import re
import sqlite3
import threading

import httpx
from pynetdicom import AE, StoragePresentationContexts, evt

from support.nodes import AUTH, TESTS, free_port, storescu, wait_for
from support.stop_support import CONFIG, WAYS, stop_all

SLOW = {"PYTHONPATH": str(TESTS / "fault_hooks"), "TRAUMA_TEST_ANSWER_DELAY_S": "1"}


class SlowPacs:
    """One PACS port per node; a C-STORE is answered only once `answer` is set."""

    def __init__(self, count: int):
        self.answer = threading.Event()
        self.receiving = [threading.Event() for _ in range(count)]
        self.ports = [free_port() for _ in range(count)]
        self.ae = AE(ae_title="PACS")
        self.ae.supported_contexts = StoragePresentationContexts
        for i, port in enumerate(self.ports):
            self.ae.start_server(("127.0.0.1", port), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, self._store, [i])])

    def _store(self, event, i: int) -> int:
        self.receiving[i].set()
        self.answer.wait(60)
        return 0x0000

    def stop(self) -> None:
        self.answer.set()
        self.ae.shutdown()


def ask_and_read(node, streaming: threading.Event, study_uid: str) -> None:
    """A question whose answer streams (a piece a second) until the node stops."""
    try:
        with httpx.stream("POST", f"{node.url}/studies/{study_uid}/questions", headers=AUTH,
                          json={"question": "How much blood is there?"}, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("event: token"):
                    streaming.set()
    except httpx.HTTPError:  # the node went away
        pass


def outbox_states(node) -> list[str]:
    with sqlite3.connect(node.data_dir / "index.sqlite") as db:
        return [row[0] for row in db.execute("SELECT state FROM outbox")]


def test_serve_stops_mid_delivery_with_an_answer_streaming(node_factory, phantom_factory):
    truth = phantom_factory("stop-delivering", slices=12, rows=64, cols=64)
    pacs = SlowPacs(len(WAYS))
    try:
        nodes = [node_factory(CONFIG + f"""
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = {port}
""", start=False, env=SLOW, name=f"node-{i}", new_session=True)
                 for i, port in enumerate(pacs.ports)]
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            wait_for(node._ready, timeout=120, what="node start-up")
            storescu([truth.paths[0].parent], node.dicom_port)
        streaming = [threading.Event() for _ in nodes]
        for node, receiving, answer in zip(nodes, pacs.receiving, streaming):
            assert receiving.wait(90), "no delivery under way"
            threading.Thread(target=ask_and_read, args=(node, answer, truth.spec.study_uid),
                             daemon=True).start()
        for answer in streaming:
            assert answer.wait(30), "no answer streaming"

        print("seconds to stop:", stop_all(nodes))
        for node in nodes:
            assert outbox_states(node) == ["pending"]  # cut off: not sent, not lost
            assert re.search(r"stopping: .*delivery.* still busy", node.log())

        pacs.answer.set()  # the PACS answers at once from now on
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            wait_for(lambda: outbox_states(node) == ["sent"], timeout=90,
                     what="the delivery made after the restart")
    finally:
        pacs.stop()
