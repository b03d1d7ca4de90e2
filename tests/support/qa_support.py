"""Helpers of the Q&A and HTTP tests: real Findings, study rows, the API served by
uvicorn on a free port, and a Server-Sent Events reader that follows the spec."""

from __future__ import annotations

import codecs
import functools
import json
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import uvicorn
from pydicom.uid import generate_uid

from support.nodes import API_TOKEN, free_port
from support.phantom import PhantomSpec, write_series

import node.store.conversations  # noqa: F401 - registers the Q&A table before Index() is made
from node.audit.trail import AuditTrail
from node.config import Settings
from node.http.app import create_app, server_config
from node.store.database import Index, Job, Series, Study, utcnow
from pipeline import PipelineSettings, run_series

# A coarse phantom that still shows the whole abdomen: a splenic hematoma, blood beside
# the spleen and the right kidney/liver, a blush in the perisplenic collection.
BLEED = dict(slices=40, rows=128, cols=128, pixel_spacing=(3.125, 3.125), slice_spacing=5.0,
             blood="splenic_injury", blush=True)
CLEAN = dict(slices=40, rows=128, cols=128, pixel_spacing=(3.125, 3.125), slice_spacing=5.0,
             blood="none", blush=False)


@functools.lru_cache(maxsize=None)
def _findings_json(kind: str) -> str:
    spec = PhantomSpec(**(BLEED if kind == "bleed" else CLEAN))
    with tempfile.TemporaryDirectory(prefix="qa-phantom-") as root:
        truth = write_series(spec, Path(root) / kind)
        return json.dumps(run_series(truth.paths, PipelineSettings()).to_json_dict())


def findings_dict(kind: str, _root: Path | None = None) -> dict:
    """Findings.to_json_dict() of a real pipeline run on a phantom (bleed | clean), made
    once per test session."""
    return json.loads(_findings_json(kind))


def insert_study(index: Index, findings: dict | None, study_uid: str | None = None,
                 job_state: str = "done") -> str:
    """A study with one series whose current version's job holds findings."""
    study_uid = study_uid or generate_uid()
    with index.session() as session, session.begin():
        study = Study(study_uid=study_uid)
        series = Series(series_uid=generate_uid(), modality="CT", state="queued", version=1,
                        instance_count=40, completed_at=utcnow(), study=study)
        session.add_all([study, series,
                         Job(series=series, series_version=1, state=job_state, attempts=1,
                             started_at=utcnow(),
                             finished_at=utcnow() if job_state == "done" else None,
                             result=findings if job_state == "done" else None)])
    return study_uid


def api_settings(data_dir: Path, **api) -> Settings:
    settings = Settings()
    settings.node.data_dir = str(data_dir)
    for key, value in api.items():
        setattr(settings.api, key, value)
    return settings


class ApiServer:
    """create_app() served by uvicorn in a thread, on a free loopback port; audited: with an
    audit trail (DATA/audit/audit.log)."""

    def __init__(self, data_dir: Path, tokens: list[str] | None = (API_TOKEN,),
                 answerer=None, audited: bool = False, **api):
        data_dir.mkdir(parents=True, exist_ok=True)
        self.settings = api_settings(data_dir, **api)
        self.index = Index(self.settings.database_url)
        self.audit = AuditTrail(self.settings) if audited else None
        self.app = create_app(self.settings, self.index, answerer=answerer,
                              tokens=list(tokens) if tokens is not None else None,
                              audit=self.audit)
        self.port = free_port()
        self.server = uvicorn.Server(server_config(self.app, "127.0.0.1", self.port,
                                                   self.settings.node.stop_timeout_s))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ApiServer":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.index.close()


@dataclass
class Event:
    event: str
    data: str


_LINE = re.compile(r"\r\n|\n|\r(?!$)")


def sse_events(chunks: Iterable[bytes]) -> Iterator[Event]:
    """Events from a byte stream, per the HTML spec's event-stream interpretation."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    buffer, event, data = "", "message", []
    for chunk in chunks:
        buffer += decoder.decode(chunk)
        while (m := _LINE.search(buffer)) is not None:
            line, buffer = buffer[:m.start()], buffer[m.end():]
            if line == "":
                if data:
                    yield Event(event, "\n".join(data))
                event, data = "message", []
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data.append(value)
                elif name == "event":
                    event = value


def ask(client, base: str, study_uid: str, question: str, status: str | None = None,
        headers: dict | None = None) -> tuple[str, dict, list[Event]]:
    """POST a question, read the whole stream: (answer text, done payload, events)."""
    from support.nodes import AUTH

    body = {"question": question}
    if status:
        body["hemodynamic_status"] = status
    with client.stream("POST", f"{base}/studies/{study_uid}/questions", json=body,
                       headers=headers or AUTH, timeout=30) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response.iter_raw()))
    assert events[0].event == "start" and events[-1].event == "done", events[-3:]
    text = "".join(e.data for e in events if e.event == "token")
    return text, json.loads(events[-1].data), events


class SlowAnswerer:
    """The grounded answerer, slowed down per piece, that records when it was closed
    (the way a model answerer releases the shared model)."""

    name, version, description = "slow-grounded", "test", "grounded answers, slowed down"

    def __init__(self, delay_s: float = 0.01, fail_after: int | None = None):
        from pipeline.answering import GroundedAnswerer

        self.inner = GroundedAnswerer()
        self.delay_s, self.fail_after = delay_s, fail_after
        self.closed = threading.Event()
        self.intervals: list[tuple[str, float, float]] = []  # (study, start, end)

    def answer(self, question):
        start = time.monotonic()
        try:
            for i, piece in enumerate(self.inner.answer(question)):
                if self.fail_after is not None and i == self.fail_after:
                    raise RuntimeError("model out of memory")
                time.sleep(self.delay_s)
                yield piece
        finally:
            self.intervals.append((question.findings.series["study_instance_uid"], start,
                                   time.monotonic()))
            self.closed.set()
