"""Questions about a study, answered as a stream of Server-Sent Events.

The answerer (pipeline.answering) runs in its own thread and hands its pieces
to the response through a queue; the question is stored before the answer
starts, and the answer when it ends (complete, or interrupted when the client
went away, or failed), so the conversation in the database never depends on the
connection. Events, in order:

    event: start   data: {"question_id": ..., "answerer": ..., "job_id": ...}
    event: token   data: a piece of the answer text (one data: line per line)
    event: done    data: {"message_id": ..., "question_id": ..., "state": "complete", ...}
    event: error   data: {"message_id": ..., "question_id": ..., "error": ...} (instead of done)

plus ``: keep-alive`` comments while a slow answerer is quiet. Line breaks in
the text are sent as separate ``data:`` lines, so any text round-trips; a
carriage return cannot travel in SSE data, so CR and CRLF become LF (in the
stored text too). Questions and answers are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterator

from pipeline.answering import Answerer, Question

from node.store import conversations
from node.store.database import Index

log = logging.getLogger("trauma_node.qa")

KEEPALIVE_S = 15.0
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def sse_event(data: str, event: str | None = None, event_id: str | None = None) -> bytes:
    """One SSE event: optional event/id fields, each line of data on its own ``data:``
    line, a blank line at the end."""
    lines = []
    for name, value in (("event", event), ("id", event_id)):
        if value is not None:
            if _LINE_BREAK.search(value) or "\0" in value:
                raise ValueError(f"SSE {name} must be one line")
            lines.append(f"{name}: {value}")
    lines += [f"data: {line}" for line in _LINE_BREAK.split(data)]
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def sse_comment(text: str) -> bytes:
    return b"".join(f": {line}\n".encode() for line in _LINE_BREAK.split(text)) + b"\n"


def normalise(text: str) -> str:
    """What SSE can carry: CRLF and lone CR as LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


class _Cancelled(Exception):
    """The answer was cancelled before it began."""


@dataclass
class Timing:
    started: float = field(default_factory=time.perf_counter)
    first_piece_s: float | None = None
    total_s: float | None = None


class OpenAnswers:
    """The answers being generated, so that shutting down can stop them and wait until
    each has stored what it had (as an interrupted answer) before the database closes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: dict[threading.Thread, threading.Event] = {}

    def add(self, thread: threading.Thread, cancel: threading.Event) -> None:
        with self._lock:
            self._threads[thread] = cancel

    def discard(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads.pop(thread, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._threads)

    def stop(self, timeout_s: float) -> int:
        """Cancel every open answer and wait up to timeout_s in all; how many did not end."""
        with self._lock:
            open_now = dict(self._threads)
        for cancel in open_now.values():
            cancel.set()
        deadline = time.monotonic() + timeout_s
        for thread in open_now:
            thread.join(max(0.0, deadline - time.monotonic()))
        left = sum(thread.is_alive() for thread in open_now)
        if open_now:
            log.info("stopping: %d answer(s) in progress were interrupted and stored, %d did not "
                     "end within %.0f s", len(open_now) - left, left, timeout_s)
        return left


class AnswerOrder:
    """One answer at a time per study, in the order the questions were asked.

    A follow-up asked while the answer before it is still streaming waits for that
    answer to be stored, and then gets it as context, as in a conversation. Studies
    do not wait for one another. Only the questions of this process take part: a
    question left unanswered by a crash never holds up later ones.
    """

    WAIT_POLL_S = 0.25  # how often a waiting answer checks whether it was cancelled

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._waiting: dict[int, list[int]] = {}  # study pk -> question ids (a heap)

    def ask(self, study_pk: int, store_question: Callable[[], int]) -> int:
        """Store a question (store_question returns its id) and take its place in line.
        Both under one lock, so that the places follow the ids."""
        with self._changed:
            question_id = store_question()
            heapq.heappush(self._waiting.setdefault(study_pk, []), question_id)
            return question_id

    @contextlib.contextmanager
    def turn(self, study_pk: int, question_id: int, cancel: threading.Event) -> Iterator[bool]:
        """Wait until the earlier questions of the study are answered; yields False
        when cancelled while waiting. Gives the place up on leaving."""
        try:
            with self._changed:
                while self._waiting[study_pk][0] != question_id and not cancel.is_set():
                    self._changed.wait(self.WAIT_POLL_S)
            yield not cancel.is_set()
        finally:
            with self._changed:
                line = self._waiting[study_pk]
                line.remove(question_id)
                heapq.heapify(line)
                if not line:
                    del self._waiting[study_pk]
                self._changed.notify_all()


class AnswerStream:
    """Runs one answer in a thread and yields its SSE events.

    The question's history is read when its turn comes (see AnswerOrder), so that it
    includes every answer stored before it."""

    def __init__(self, index: Index, answerer: Answerer, question: Question, study_uid: str,
                 study_pk: int, question_id: int, job_id: int | None,
                 keepalive_s: float = KEEPALIVE_S, open_answers: OpenAnswers | None = None,
                 order: AnswerOrder | None = None):
        self.index, self.answerer, self.question = index, answerer, question
        self.study_uid, self.study_pk, self.question_id, self.job_id = (
            study_uid, study_pk, question_id, job_id)
        self.keepalive_s = keepalive_s
        self.open_answers = open_answers if open_answers is not None else OpenAnswers()
        self.order = order
        self.cancel = threading.Event()
        self.timing = Timing()
        self._queue: asyncio.Queue[tuple[str, Any]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start answering now, from the event loop, whether or not the response is
        ever read: the answer is stored and the question's place in line given up
        even when the client is gone before the stream begins."""
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        thread = threading.Thread(target=self._produce, name=f"answer-{self.question_id}",
                                  daemon=True)
        self.open_answers.add(thread, self.cancel)
        thread.start()

    def _put(self, item: tuple[str, Any]) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)  # type: ignore[union-attr]
        except RuntimeError:  # the event loop is gone (server stopping)
            self.cancel.set()

    def _produce(self) -> None:
        try:
            if self.order is None:
                self._answer_and_store()
            else:
                with self.order.turn(self.study_pk, self.question_id, self.cancel) as my_turn:
                    self._answer_and_store(my_turn)
        finally:
            self.open_answers.discard(threading.current_thread())

    def _answer_and_store(self, answer: bool = True) -> None:
        parts: list[str] = []
        state, error = conversations.MessageState.COMPLETE.value, None
        pieces: Iterator[str] | None = None
        try:
            if not answer:  # cancelled while an earlier question was being answered
                raise _Cancelled
            history = conversations.history(self.index, self.study_pk, before_id=self.question_id)
            question = dataclasses.replace(self.question, history=history)
            pieces = iter(self.answerer.answer(question))
            for piece in pieces:
                if self.cancel.is_set():
                    state = conversations.MessageState.INTERRUPTED.value
                    break
                piece = normalise(piece)
                if not piece:
                    continue
                if self.timing.first_piece_s is None:
                    self.timing.first_piece_s = time.perf_counter() - self.timing.started
                parts.append(piece)
                self._put(("token", piece))
        except _Cancelled:
            state = conversations.MessageState.INTERRUPTED.value
        except Exception as exc:  # noqa: BLE001 - reported to the client, stored as failed
            state, error = conversations.MessageState.FAILED.value, type(exc).__name__
            log.warning("study %s: answerer %s failed on question %d: %s", self.study_uid,
                        self.answerer.name, self.question_id, type(exc).__name__)
        finally:
            close = getattr(pieces, "close", None)
            if callable(close):
                close()  # releases what the answerer holds (the shared model)
        self.timing.total_s = time.perf_counter() - self.timing.started
        text = "".join(parts)
        try:
            message_id = conversations.add_answer(self.index, self.study_pk, self.question_id,
                                                  text, state, self.answerer.name, self.job_id)
        except Exception as exc:  # noqa: BLE001
            log.error("study %s: answer to question %d not stored: %s", self.study_uid,
                      self.question_id, type(exc).__name__)
            self._put(("error", {"question_id": self.question_id, "message_id": None,
                                 "error": "the answer could not be stored"}))
            return
        log.info("study %s: question %d answered by %s: %s, %d characters, first piece "
                 "%.3f s, total %.3f s, message %d", self.study_uid, self.question_id,
                 self.answerer.name, state, len(text), self.timing.first_piece_s or -1,
                 self.timing.total_s, message_id)
        payload = {"message_id": message_id, "question_id": self.question_id, "state": state,
                   "answerer": self.answerer.name, "job_id": self.job_id,
                   "characters": len(text)}
        if error is not None:
            self._put(("error", {**payload, "error": f"the answerer failed ({error})"}))
        else:
            self._put(("done", payload))

    async def events(self) -> AsyncIterator[bytes]:
        """The SSE events of the answer; start() must have been called."""
        if self._queue is None:
            raise RuntimeError("AnswerStream.start() was not called")
        try:
            yield sse_event(json.dumps({"question_id": self.question_id,
                                        "study_uid": self.study_uid,
                                        "answerer": self.answerer.name, "job_id": self.job_id}),
                            event="start")
            while True:
                try:
                    item = await asyncio.wait_for(self._queue.get(), self.keepalive_s)
                except asyncio.TimeoutError:
                    yield sse_comment("keep-alive")
                    continue
                # Whatever else is already waiting goes out in the same write: one
                # event per piece still, fewer sends when the answerer is fast.
                chunk, finished = [], False
                while True:
                    kind, payload = item
                    if kind == "token":
                        chunk.append(sse_event(payload, event="token"))
                    else:
                        chunk.append(sse_event(json.dumps(payload), event=kind))
                        finished = True
                        break
                    try:
                        item = self._queue.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                yield b"".join(chunk)
                if finished:
                    return
        finally:
            # The client went away (or the stream ended): stop the answerer; it stores
            # what it had as an interrupted answer.
            self.cancel.set()
