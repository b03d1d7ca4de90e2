"""Every table of the node's database, declared here and nowhere else.

The index (studies, series, instances, jobs, workers), the outbox and the questions
and answers share one SQLAlchemy metadata, Base.metadata. A schema change is a new
Alembic migration in node/migrations/versions/ beside the change here;
tests/test_migrations.py checks that the migrations build exactly these tables.
No patient names or IDs are stored: the node identifies everything by UID.
"""

from __future__ import annotations

import datetime as dt
import enum
import time

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


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


class OutboxState(str, enum.Enum):
    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"
    # Held results of a series version that may be incomplete, replaced by a later
    # version before they were sent (node.store.receiving): never sent, kept as a record.
    WITHDRAWN = "withdrawn"


class MessageState(str, enum.Enum):
    COMPLETE = "complete"
    INTERRUPTED = "interrupted"  # the client went away; the text so far is kept
    FAILED = "failed"  # the answerer raised; the text so far is kept


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
    # Header values for selection (node.store.headers.InstanceHeader.geometry()).
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
    """A worker's heartbeat: a job whose worker stopped beating is taken back (node.store.jobs)."""

    __tablename__ = "workers"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)  # host/role-N
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)


class ReceiverBeat(Base):
    """A receiving process's heartbeat (node.store.senders): the associations of one that
    stopped beating, its process or host dead, no longer hold their series open."""

    __tablename__ = "receivers"
    name: Mapped[str] = mapped_column(String(96), primary_key=True)  # node/pid
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)


class Sender(Base):
    """An open association sending a series, held by a receiving process (node.store.senders):
    completion waits for it; one left by a process that died marks the series possibly
    incomplete."""

    __tablename__ = "senders"
    __table_args__ = (UniqueConstraint("series_id", "receiver", "association"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    receiver: Mapped[str] = mapped_column(String(96), index=True)
    association: Mapped[int] = mapped_column(BigInteger)  # its number in the receiver


class DeliveryAttempts:
    """The columns of a row sent until it is delivered (node.store.outbox): the result
    outbox's and the alerts'."""

    # pending | sent | dead | withdrawn (8 characters until migration 0002)
    state: Mapped[str] = mapped_column(String(16), default=OutboxState.PENDING.value, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=0.0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # Epoch seconds when the last attempt was about to go out (a C-STORE, an alert); None
    # once the receiver answered it. Set when due: that attempt was cut off (in doubt).
    attempt_started_at: Mapped[float | None] = mapped_column(Float)


class OutboxItem(DeliveryAttempts, Base):
    """One result object for one destination, until it is delivered (node.store.outbox)."""

    __tablename__ = "outbox"
    __table_args__ = (UniqueConstraint("sop_instance_uid", "destination"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_uid: Mapped[str] = mapped_column(String(64))  # the source series
    series_version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(8))  # seg | sr | sc | pdf | kos
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)  # absolute path of the object file
    destination: Mapped[str] = mapped_column(String(64))


class AlertCheck(Base):
    """A finished job the alert watcher has looked at (node.alerts.store): checked once,
    whether or not it called for an alert; `fired` names the triggers it met."""

    __tablename__ = "alert_checks"
    job_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fired: Mapped[str] = mapped_column(String(64), default="")  # comma-separated; '' none
    checked_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class AlertItem(DeliveryAttempts, Base):
    """One critical-result alert for one receiver ([[alerts]], node.alerts), until it is
    delivered (node.alerts.store): pending, sent or dead. The payload is built when it is
    sent, from the job's result."""

    __tablename__ = "alerts"
    __table_args__ = (UniqueConstraint("job_id", "receiver"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(Integer, index=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    series_version: Mapped[int] = mapped_column(Integer)
    receiver: Mapped[str] = mapped_column(String(64))
    # Stable across attempts and restarts: the receiver tells a repeat by it.
    alert_id: Mapped[str] = mapped_column(String(64), unique=True)
    triggers: Mapped[str] = mapped_column(String(64))  # comma-separated


class QaMessage(Base):
    """One question or answer of a study's conversation (node.store.conversations)."""

    __tablename__ = "qa_messages"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(8))  # question | answer
    text: Mapped[str] = mapped_column(Text)
    # For an answer: the question it answers.
    question_id: Mapped[int | None] = mapped_column(
        ForeignKey("qa_messages.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(12), default=MessageState.COMPLETE.value)
    hemodynamic_status: Mapped[str | None] = mapped_column(String(8))
    answerer: Mapped[str | None] = mapped_column(String(64))
    # The job whose Findings grounded the answer (series version at the time).
    job_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)


class Reader(Base):
    """A person's account for the HTTP API (node.store.readers): a radiologist who judges the
    findings (reader) or one who also administers (admin). Only the SHA-256 of the account's
    token is stored; the token itself is shown once, when it is made."""

    __tablename__ = "readers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)  # the login: lower case
    display_name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16), default="reader")  # reader | admin
    # hex SHA-256 of the current token; None: no token (none made yet)
    token_sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    token_created_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class Verdict(Base):
    """A reader's verdict on one finding of one analysis (node.store.verdicts): accepted,
    rejected or corrected. A later verdict of the same reader on the same finding of the same
    job supersedes it (superseded_by_id); the history is kept."""

    __tablename__ = "verdicts"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    series_version: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[int] = mapped_column(Integer, index=True)
    finding_key: Mapped[str] = mapped_column(String(64))  # hemorrhage, organ/spleen, ...
    finding_type: Mapped[str] = mapped_column(String(32), index=True)
    ai_value: Mapped[str] = mapped_column(String(128))  # what the AI said, for people
    ai_volume_ml: Mapped[float | None] = mapped_column(Float)
    # The backend of the stage that made the finding, and its version (weights included).
    backend: Mapped[str] = mapped_column(String(64))
    backend_version: Mapped[str] = mapped_column(String(128))
    pipeline_version: Mapped[str] = mapped_column(String(32))
    verdict: Mapped[str] = mapped_column(String(16))  # accepted | rejected | corrected
    corrected_volume_ml: Mapped[float | None] = mapped_column(Float)
    note: Mapped[str | None] = mapped_column(Text)
    reader_id: Mapped[int] = mapped_column(ForeignKey("readers.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    superseded_by_id: Mapped[int | None] = mapped_column(ForeignKey("verdicts.id"))
