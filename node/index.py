"""The index: studies, series, instances and jobs in one SQLAlchemy database.

SQLite by default (WAL, so readers never block the receiving thread); the same
models work on PostgreSQL for workers on other hosts. No patient names or IDs
are stored: the node identifies everything by UID.
"""

from __future__ import annotations

import datetime as dt
import enum
import sqlite3
import threading
import time
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class SeriesState(str, enum.Enum):
    RECEIVING = "receiving"  # instances arriving; completion timer running
    QUEUED = "queued"  # complete and selected: a job exists for this version
    SKIPPED = "skipped"  # complete but not analysed; skip_reason says why


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    series: Mapped[list["Series"]] = relationship(back_populates="study", order_by="Series.id")


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default=SeriesState.RECEIVING.value, index=True)
    # Bumped when instances arrive after the series was queued or skipped.
    version: Mapped[int] = mapped_column(Integer, default=1)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    expected_count: Mapped[int | None] = mapped_column(Integer)
    first_received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # Epoch seconds of the last instance or the last release of an association
    # that sent to it: the quiet period counts from here.
    last_activity: Mapped[float] = mapped_column(Float, default=time.time)
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    skip_reason: Mapped[str | None] = mapped_column(Text)
    # Why this version may lack instances (its association was aborted, the node stopped
    # while receiving it); None when nothing cut its receiving short. Reset by a new version.
    incomplete_reason: Mapped[str | None] = mapped_column(Text)
    study: Mapped[Study] = relationship(back_populates="series")
    jobs: Mapped[list["Job"]] = relationship(back_populates="series", order_by="Job.id")


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    # Relative to the spool directory.
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(Integer)
    # The series version this instance first belonged to: version N of a series
    # is made of the instances with series_version <= N.
    series_version: Mapped[int] = mapped_column(Integer)
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    # Header values for selection (node.headers.InstanceHeader.geometry()).
    geometry: Mapped[dict | None] = mapped_column(JSON)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("series_id", "series_version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    series_version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict | None] = mapped_column(JSON)
    # The series version's incomplete_reason when it was queued: its results are held.
    incomplete_reason: Mapped[str | None] = mapped_column(Text)
    series: Mapped[Series] = relationship(back_populates="jobs")


class WorkerBeat(Base):
    """A worker's heartbeat: a job whose worker stopped beating is taken back (node.jobs)."""

    __tablename__ = "workers"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)  # host/role-N
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)


# Columns added after a release, by table: databases made before get them when an Index
# opens them. (Until the schema has real migrations: then this goes.)
ADDED_COLUMNS = {
    "outbox": {"attempt_started_at": "FLOAT"},
    "series": {"incomplete_reason": "TEXT"},
    "jobs": {"incomplete_reason": "TEXT"},
}


@event.listens_for(Base.metadata, "after_create")
def _add_new_columns(_metadata, connection, **_kw) -> None:
    tables = inspect(connection)
    for table, columns in ADDED_COLUMNS.items():
        if not tables.has_table(table):
            continue
        have = {c["name"] for c in tables.get_columns(table)}
        for name, sql_type in columns.items():
            if name not in have:
                connection.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}"))


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
        Base.metadata.create_all(self.engine)
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
