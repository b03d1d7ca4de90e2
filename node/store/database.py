"""The index: the node's one SQLAlchemy database (studies, series, instances, jobs,
outbox, questions and answers; the tables are declared in node.store.tables).

SQLite by default (WAL, so readers never block the receiving thread); the same
models work on PostgreSQL for workers on other hosts. Opening it checks its schema
(node.store.schema). No patient names or IDs are stored: the node identifies everything by UID.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from node.store import schema
# The tables live in node.store.tables; named here too, where the node's modules look for them.
from node.store.tables import (Base, Instance, Job, JobState, Series, SeriesState, Study, WorkerBeat,
                     utcnow)


def make_engine(url: str, durable: bool = False) -> Engine:
    """An engine for url; for SQLite, WAL mode and a busy timeout between processes.

    durable=True makes SQLite fsync on every commit (synchronous=FULL), matching
    the spool's fsync option; NORMAL in WAL mode survives a crash of the process.
    """
    is_sqlite = url.startswith("sqlite")
    engine = create_engine(url, connect_args={"timeout": 30} if is_sqlite else {})
    if is_sqlite:
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    return engine


class Index:
    """The database handle shared by the SCP, the completion monitor and the CLI."""

    def __init__(self, url: str, durable: bool = False):
        self.engine = make_engine(url, durable)
        # A new, empty database is created at the current schema; an older one is refused
        # (schema.SchemaOutdated: `trauma-node db upgrade`), as is a newer one.
        schema.ensure_current(self.engine)
        self.session = sessionmaker(self.engine, expire_on_commit=False)
        self._hot_lock = threading.Lock()
        self._hot: Any = None
        self._hot_fairy: Any = None

    def hot_connection(self) -> sqlite3.Connection | None:
        """One long-lived sqlite3 connection for the receiver's per-instance
        statements, or None where the index is not a SQLite file.

        It comes from the engine's pool, so the pragmas are those of every
        connection; SQLAlchemy opens file databases with check_same_thread=False,
        and its one user serialises on Receiver.lock.
        """
        url = self.engine.url
        if (url.get_backend_name() != "sqlite" or self.engine.dialect.driver != "pysqlite"
                or url.database in (None, "", ":memory:") or "memory" in str(url.query)):
            return None
        with self._hot_lock:
            if self._hot is None:
                self._hot_fairy = self.engine.raw_connection()
                self._hot = self._hot_fairy.driver_connection
            return self._hot

    def close(self) -> None:
        with self._hot_lock:
            if self._hot_fairy is not None:
                self._hot_fairy.close()
            self._hot = self._hot_fairy = None
        self.engine.dispose()


__all__ = ["Base", "Index", "Instance", "Job", "JobState", "Series", "SeriesState", "Study",
           "WorkerBeat", "make_engine", "utcnow"]
