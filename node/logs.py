"""Logging set-up: one line per event, UIDs and AE titles only, never patient data.

Whatever came from the network (AE titles, UIDs, hosts, exception text, and what
pynetdicom logs about them, such as a raw invalid UID) can hold control characters.
Every handler the node installs formats with EscapingFormatter, which shows them
escaped (a newline as \\n, ESC as \\x1b), so that a sender cannot forge a log line or
drive the terminal that shows the log. Tracebacks stay readable on several lines: the
frames are the node's code; only the exception's own text is escaped.

pydicom and pynetdicom warn once per instance, often several times (ten lines for each
instance whose UIDs have a leading zero): RepeatedLines lets the first line of each kind
through and counts the rest, one summary line per kind when its minute is up. The
node's own lines are summarised where they are made (per association, node.dicom.scp).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
import traceback
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# C0 controls, DEL, C1 controls, and the two Unicode line and paragraph separators
# (str.splitlines breaks lines at them, and so may a log viewer).
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t",
                 0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape_controls(text: str) -> str:
    """text with every control character escaped: one line, nothing for a terminal."""
    return text.translate(_ESCAPES)


class EscapingFormatter(logging.Formatter):
    """logging.Formatter whose lines hold no control character from a message.

    The rendered message (its arguments included) is escaped as a whole; a traceback
    keeps its lines, with each exception's text escaped.
    """

    def format(self, record: logging.LogRecord) -> str:
        # Not the traceback text another handler's formatter may have cached on the record.
        cached, record.exc_text = record.exc_text, None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        exc_type, exc, tb = ei
        if exc is None:
            return escape_controls(super().formatException(ei))
        rendered = traceback.TracebackException(exc_type, exc, tb, compact=True)
        if not isinstance(getattr(rendered, "_str", None), str):
            # Not CPython 3.11 to 3.13, where _str holds str(exc): all on one line.
            return escape_controls(super().formatException(ei))
        _escape_texts(rendered, set())
        return "".join(rendered.format()).rstrip("\n")

    def formatStack(self, stack_info: str) -> str:
        return stack_info  # the node's own frames


def _escape_texts(rendered: traceback.TracebackException, seen: set[int]) -> None:
    """Escape the text of an exception, of its cause and context, and of their notes."""
    if id(rendered) in seen:
        return
    seen.add(id(rendered))
    text = getattr(rendered, "_str", None)  # what str(exc) gave
    if isinstance(text, str):
        rendered._str = escape_controls(text)  # type: ignore[attr-defined]
    notes = getattr(rendered, "__notes__", None)
    if isinstance(notes, list):
        rendered.__notes__ = [escape_controls(str(note)) for note in notes]
    for attr in ("msg", "text", "filename"):  # SyntaxError's fields
        value = getattr(rendered, attr, None)
        if isinstance(value, str):
            setattr(rendered, attr, escape_controls(value))
    for linked in (rendered.__cause__, rendered.__context__,
                   *(getattr(rendered, "exceptions", None) or ())):
        if linked is not None:
            _escape_texts(linked, seen)


_NUMBERS = re.compile(r"\d+")


class RepeatedLines(logging.Filter):
    """Lines of other libraries that repeat within window_s: the first passes, the others
    are counted, and one line says how many when the window ends (at the next line logged,
    or at flush()). Lines alike but for their numbers (UIDs, counts) are one kind."""

    def __init__(self, target: logging.Handler, window_s: float = 60.0,
                 own: str = "trauma_node") -> None:
        super().__init__()
        self.target, self.window_s, self.own = target, window_s, own
        self._open: dict[tuple[str, int, str], list[Any]] = {}  # -> [until, count, first]
        self._lock = threading.Lock()
        self._local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(self._local, "summarising", False):
            return True
        self.flush(record.created)
        if record.name.startswith(self.own):
            return True
        key = (record.name, record.levelno, _NUMBERS.sub("#", record.getMessage()))
        with self._lock:
            entry = self._open.get(key)
            if entry is None:
                self._open[key] = [record.created + self.window_s, 0, record]
                return True
            entry[1] += 1
            return False

    def flush(self, now: float | None = None) -> None:
        """Summarise the kinds whose window has ended by now (all of them when None)."""
        limit = float("inf") if now is None else now
        with self._lock:
            ended = [key for key, (until, _, _) in self._open.items() if until <= limit]
            entries = [self._open.pop(key) for key in ended]
        for _, count, first in entries:
            if count:
                self._summarise(first, count)

    def _summarise(self, first: logging.LogRecord, count: int) -> None:
        text = first.getMessage()
        summary = logging.LogRecord(
            first.name, first.levelno, first.pathname, first.lineno,
            "%d more line(s) like this in %.0f s were not logged: %s", (
                count, self.window_s, text if len(text) <= 160 else text[:157] + "..."), None)
        self._local.summarising = True
        try:
            self.target.handle(summary)
        finally:
            self._local.summarising = False


def handler(stream: Any = None) -> logging.Handler:
    """A stream handler (stderr by default) with the node's escaping format and repeated
    library lines summarised."""
    h = logging.StreamHandler(stream if stream is not None else sys.stderr)
    h.setFormatter(EscapingFormatter(FORMAT))
    h.addFilter(RepeatedLines(h))
    return h


def flush_repeated_lines() -> None:
    """Say now how many library lines were held back (at the end of a process)."""
    for h in logging.getLogger().handlers:
        for f in h.filters:
            if isinstance(f, RepeatedLines):
                f.flush()


def setup_logging(level: str = "INFO") -> None:
    """The root logger's only handler: stderr, escaped (journald, docker logs). Every
    logger of the node, pynetdicom and uvicorn (node.http.app gives it no handlers of
    its own) propagates to it."""
    root_level = getattr(logging, level, logging.INFO)
    logging.basicConfig(level=root_level, handlers=[handler()], force=True)
    # Library warnings (pydicom's, once per odd UID) go through the same handler and its
    # summary of repeated lines, in every process: serve's spawned receiving processes
    # and workers set up their logging here too, not in node.cli.
    logging.captureWarnings(True)
    # pynetdicom logs dataset contents (patient names among them) at DEBUG and
    # every PDU at INFO: the node logs its own association lines instead.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # highdicom logs a dozen INFO lines for each SEG or SR it builds ("copy attributes of
    # module ..."), Alembic two each time the database is opened: their warnings only,
    # unless the node logs at DEBUG.
    for chatty in ("highdicom", "alembic"):
        logging.getLogger(chatty).setLevel(
            logging.NOTSET if root_level <= logging.DEBUG else logging.WARNING)


__all__ = ["EscapingFormatter", "FORMAT", "RepeatedLines", "escape_controls",
           "flush_repeated_lines", "handler", "setup_logging"]
