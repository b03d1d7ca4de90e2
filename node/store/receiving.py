"""Storing one received instance: spool file first, index row second.

The C-STORE handler answers Success only after `Receiver.store` returns, that
is after the file is renamed into the spool and its row committed. The same
SOP Instance received twice is stored once. Which associations are still
sending to which series is tracked here, so completion can wait for them, and a
series whose sender's association was aborted (or that was still receiving when
the node stopped) is marked as possibly incomplete: its results are held
(node.work.job), and withdrawn when a later version of it arrives.

Speed (profiled with bench/ingest.py): an instance of a series that is already
receiving costs one duplicate look-up and one transaction of two statements,
an INSERT of the instance and a guarded UPDATE of its series:

    UPDATE series SET instance_count = instance_count + 1, ...
     WHERE id = :id AND series_uid = :uid AND version = :version AND state = 'receiving'

The series id and version come from memory (`_receiving`); the WHERE clause
re-checks them in the same transaction, so when the completion monitor (or
anyone) has moved the series on, the UPDATE matches nothing, the transaction
is rolled back and the instance goes through the full path, which makes a new
version as before. The hint is checked against the database once more when an
association first sends to it: another process (retention in `serve`) may have
removed the series, and SQLite may have given its id to another series since. Nothing is batched: every instance is committed before its
Success. On SQLite (the default) the hot path talks to the sqlite3 driver
directly on one connection owned by the index (`Index.hot_connection`);
SQLAlchemy's statement building cost more than the database work itself.
Other databases use the same statements prebuilt in SQLAlchemy Core.

Several receiving processes, and several nodes, may store into one database at once
(node.dicom.receivers; DESIGN.md, "Queue"): the first instance of a study or series can
then be stored by two of them at the same moment. The full path runs in one transaction
whose every change is guarded (a unique study and series UID, a version bump only from
the version read), and is run again when another process won the race. Which
associations are sending which series is in the database too (node.store.senders).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from node.store import outbox, senders
from node.store.headers import InstanceHeader
from node.store.database import Index, Instance, Series, SeriesState, Study, utcnow
from node.store.spool import Buffer, Spool

log = logging.getLogger("trauma_node.receive")

_RECEIVING = SeriesState.RECEIVING.value
ABORTED = "the association sending it was aborted before it was released"
NODE_STOPPED = senders.NODE_STOPPED
RACE_RETRIES = 8  # another process storing the same new study or series at once
HINTS_KEPT = 1024  # series hints per process: the ones receiving now, with room to spare


@dataclass
class StoreResult:
    stored: bool  # False: a duplicate, already held
    series_id: int
    series_version: int
    size: int = 0  # bytes written to the spool (0 for a duplicate)


class _Duplicate(Exception):
    """The SOP Instance UID is already in the index (unique constraint)."""


class _Raced(Exception):
    """Another process changed the series between our read and our write: run again."""


class _SqliteHot:
    """The per-instance statements on the sqlite3 driver connection."""

    _FIND = "SELECT series_id FROM instances WHERE sop_instance_uid = ?"
    _INSERT = ("INSERT INTO instances (series_id, sop_instance_uid, sop_class_uid, "
               "transfer_syntax_uid, path, size_bytes, series_version, calling_ae, geometry, "
               "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    _BUMP = ("UPDATE series SET instance_count = instance_count + 1, last_activity = ?, "
             "expected_count = COALESCE(?, expected_count) "
             "WHERE id = ? AND series_uid = ? AND version = ? AND state = ?")

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def find(self, sop_uid: str) -> int | None:
        rows = self.conn.execute(self._FIND, (sop_uid,)).fetchall()
        return rows[0][0] if rows else None

    def add(self, series_id: int, version: int, header: InstanceHeader, relative: str,
            size: int, transfer_syntax: str, calling_ae: str, now: float) -> bool:
        """Insert the instance and bump its series; False if the series moved on (or is
        gone: the foreign key refuses the instance)."""
        # As SQLAlchemy stores them: DateTime as text, JSON through json.dumps.
        received_at = utcnow().strftime("%Y-%m-%d %H:%M:%S.%f")
        try:
            self.conn.execute(self._INSERT, (
                series_id, header.sop_uid, header.sop_class_uid, transfer_syntax, relative,
                size, version, calling_ae, json.dumps(header.geometry()), received_at))
        except sqlite3.IntegrityError as exc:
            self.conn.rollback()
            if self.find(header.sop_uid) is None:
                return False
            raise _Duplicate() from exc
        bumped = self.conn.execute(self._BUMP, (
            now, header.images_in_acquisition or None, series_id, header.series_uid, version,
            _RECEIVING)).rowcount
        if bumped != 1:
            self.conn.rollback()
            return False
        self.conn.commit()
        return True


class _CoreHot:
    """The same statements as prebuilt SQLAlchemy Core, for other databases (and
    in-memory SQLite), on a pooled connection per call."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._find = select(Instance.series_id).where(
            Instance.sop_instance_uid == bindparam("sop"))
        self._insert = insert(Instance)
        self._bump = update(Series).where(
            Series.id == bindparam("sid"), Series.series_uid == bindparam("uid"),
            Series.version == bindparam("ver"),
            Series.state == _RECEIVING,
        ).values(instance_count=Series.instance_count + 1, last_activity=bindparam("now"),
                 expected_count=func.coalesce(bindparam("expected"), Series.expected_count))

    def find(self, sop_uid: str) -> int | None:
        with self.engine.connect() as conn:
            return conn.execute(self._find, {"sop": sop_uid}).scalar()

    def add(self, series_id: int, version: int, header: InstanceHeader, relative: str,
            size: int, transfer_syntax: str, calling_ae: str, now: float) -> bool:
        with self.engine.connect() as conn:
            try:
                conn.execute(self._insert, {
                    "series_id": series_id, "sop_instance_uid": header.sop_uid,
                    "sop_class_uid": header.sop_class_uid,
                    "transfer_syntax_uid": transfer_syntax, "path": relative,
                    "size_bytes": size, "series_version": version, "calling_ae": calling_ae,
                    "geometry": header.geometry()})
            except IntegrityError as exc:
                conn.rollback()
                if self.find(header.sop_uid) is None:
                    return False  # the series is gone
                raise _Duplicate() from exc
            bumped = conn.execute(self._bump, {
                "sid": series_id, "uid": header.series_uid, "ver": version, "now": now,
                "expected": header.images_in_acquisition or None}).rowcount
            if bumped != 1:
                conn.rollback()
                return False
            conn.commit()
            return True


class Receiver:
    def __init__(self, index: Index, spool: Spool, name: str | None = None):
        """name: this receiving process's, in node.store.senders (node/pid)."""
        self.index = index
        self.spool = spool
        self.name = name or senders.receiver_name("local")
        # One writer at a time inside this process: SQLite allows one anyway,
        # and it makes the series state transitions race-free with the
        # completion monitor, which takes the same lock.
        self.lock = threading.Lock()
        # association id -> series ids it sent, each with its row in node.store.senders
        self._sent_by: dict[int, set[int]] = {}
        # Series UID -> (id, version) as last stored in state receiving; a hint,
        # re-checked by every UPDATE (see the module docstring).
        self._receiving: dict[str, tuple[int, int]] = {}
        self._hot_db: _SqliteHot | _CoreHot | None = None

    def _hot(self) -> _SqliteHot | _CoreHot:
        """Call with the lock held."""
        if self._hot_db is None:
            conn = self.index.hot_connection()
            self._hot_db = _SqliteHot(conn) if conn is not None else _CoreHot(self.index.engine)
        return self._hot_db

    # -- storing -----------------------------------------------------------
    def store(self, header: InstanceHeader, data: Buffer | tuple[Buffer, ...] | list[Buffer],
              transfer_syntax: str, calling_ae: str, assoc_id: int) -> StoreResult:
        """Write and index one instance. Raises InvalidUID, OSError.

        data: the encoded file, as one buffer or several to write one after
        the other.
        """
        relative = self.spool.relative_path(header.study_uid, header.series_uid, header.sop_uid)
        with self.lock:
            known = self._hot().find(header.sop_uid)
        if known is not None:
            return self._duplicate(known, assoc_id)
        size = self.spool.write(relative, data)
        with self.lock:
            try:
                return self._index(header, relative, size, transfer_syntax, calling_ae, assoc_id)
            except (_Duplicate, IntegrityError):
                # Another association stored the same SOP Instance meanwhile.
                series_id = self._hot().find(header.sop_uid)
                if series_id is None:
                    raise
                return self._duplicate(series_id, assoc_id, locked=True)

    def _duplicate(self, series_id: int, assoc_id: int, locked: bool = False) -> StoreResult:
        if not locked:
            with self.lock:
                return self._duplicate(series_id, assoc_id, locked=True)
        self._mark_sending(series_id, assoc_id)
        with self.index.engine.connect() as conn:
            version = conn.execute(select(Series.version).where(
                Series.id == series_id)).scalar_one()
        return StoreResult(stored=False, series_id=series_id, series_version=version)

    def _index(self, header: InstanceHeader, relative: str, size: int, transfer_syntax: str,
               calling_ae: str, assoc_id: int) -> StoreResult:
        """Call with the lock held."""
        now = time.time()
        hint = self._checked_hint(header.series_uid, assoc_id)
        if hint is not None:
            series_id, version = hint
            if self._hot().add(series_id, version, header, relative, size, transfer_syntax,
                               calling_ae, now):
                return StoreResult(stored=True, series_id=series_id, series_version=version,
                                   size=size)
            del self._receiving[header.series_uid]  # moved on: the full path below
        for attempt in range(RACE_RETRIES):
            try:
                series_id, version = self._index_full(header, relative, size, transfer_syntax,
                                                      calling_ae, now, assoc_id)
                break
            except (_Raced, IntegrityError, OperationalError) as exc:
                # The instance itself already stored: a duplicate (Receiver.store).
                if self._hot().find(header.sop_uid) is not None or attempt == RACE_RETRIES - 1:
                    raise
                log.debug("series %s: another process stored into it at once (%s); again",
                          header.series_uid, type(exc).__name__)
                time.sleep(0.005 * (attempt + 1))
        self._receiving[header.series_uid] = (series_id, version)
        if len(self._receiving) > HINTS_KEPT:  # the oldest hint goes
            del self._receiving[next(iter(self._receiving))]
        self._sent_by.setdefault(assoc_id, set()).add(series_id)  # recorded by _index_full
        return StoreResult(stored=True, series_id=series_id, series_version=version, size=size)

    def _checked_hint(self, series_uid: str, assoc_id: int) -> tuple[int, int] | None:
        """Call with the lock held. The series id and version from memory, checked against
        the database when this association first sends to it, in the transaction that
        records it as sending (before the instance: completion never sees the one without
        the other). None: no hint, or a stale one (dropped)."""
        hint = self._receiving.get(series_uid)
        if hint is None:
            return None
        series_id, version = hint
        sent = self._sent_by.setdefault(assoc_id, set())
        if series_id in sent:
            return hint
        with self.index.engine.begin() as conn:
            if conn.execute(select(Series.id).where(
                    Series.id == series_id, Series.series_uid == series_uid,
                    Series.version == version, Series.state == _RECEIVING)).first() is None:
                del self._receiving[series_uid]
                return None
            senders.add(conn, self.name, assoc_id, series_id)
        sent.add(series_id)
        return hint

    def _index_full(self, header: InstanceHeader, relative: str, size: int,
                    transfer_syntax: str, calling_ae: str, now: float, assoc_id: int
                    ) -> tuple[int, int]:
        """First instance of a series, or one arriving after it was queued or skipped.
        Raises _Raced, IntegrityError or OperationalError when another process stored into
        the same study or series meanwhile (the caller runs it again)."""
        with self.index.engine.begin() as conn:
            study_id = conn.execute(select(Study.id).where(
                Study.study_uid == header.study_uid)).scalar()
            if study_id is None:
                study_id = conn.execute(insert(Study).values(
                    study_uid=header.study_uid).returning(Study.id)).scalar_one()
            series = conn.execute(select(
                Series.id, Series.state, Series.version, Series.incomplete_reason).where(
                Series.series_uid == header.series_uid)).first()
            expected = header.images_in_acquisition
            if series is None:
                series_id = conn.execute(insert(Series).values(
                    study_id=study_id, series_uid=header.series_uid, modality=header.modality,
                    state=_RECEIVING, version=1, instance_count=0,
                    expected_count=expected, last_activity=now,
                ).returning(Series.id)).scalar_one()
                version = 1
                log.info("series %s v1 receiving (study %s)", header.series_uid, header.study_uid)
            else:
                series_id, version = series.id, series.version
                if series.state != _RECEIVING:
                    # Late instances: a new version, processed again, never lost. Only from
                    # the version read: another process may have made it first.
                    version += 1
                    if conn.execute(update(Series).where(
                            Series.id == series_id, Series.version == series.version,
                            Series.state == series.state).values(
                            state=_RECEIVING, version=version, skip_reason=None,
                            completed_at=None, incomplete_reason=None)).rowcount != 1:
                        raise _Raced()
                    log.info("series %s v%d receiving (late instances after %s)",
                             header.series_uid, version, series.state)
                    if series.incomplete_reason:  # its held results are not sent
                        withdrawn = outbox.withdraw(conn, header.series_uid, version - 1)
                        log.info("series %s v%d replaces v%d, which may have been incomplete: "
                                 "%d held deliveries withdrawn", header.series_uid, version,
                                 version - 1, withdrawn)
            conn.execute(insert(Instance).values(
                series_id=series_id, sop_instance_uid=header.sop_uid,
                sop_class_uid=header.sop_class_uid, transfer_syntax_uid=transfer_syntax,
                path=relative, size_bytes=size, series_version=version,
                calling_ae=calling_ae, geometry=header.geometry()))
            values: dict[str, Any] = {"instance_count": Series.instance_count + 1,
                                      "last_activity": now}
            if expected:
                values["expected_count"] = expected
            if conn.execute(update(Series).where(
                    Series.id == series_id, Series.version == version,
                    Series.state == _RECEIVING).values(**values)).rowcount != 1:
                raise _Raced()  # completed meanwhile by another process's monitor
            if series_id not in self._sent_by.get(assoc_id, ()):
                senders.add(conn, self.name, assoc_id, series_id)
        return series_id, version

    def forget_series(self, series_uids: list[str]) -> None:
        """Series removed from the index (node.store.retention); call with the lock held."""
        for uid in series_uids:
            self._receiving.pop(uid, None)

    # -- who is still sending ------------------------------------------------
    def _mark_sending(self, series_id: int, assoc_id: int) -> None:
        """Call with the lock held: the association sends this series (its own transaction,
        once per pair)."""
        sent = self._sent_by.setdefault(assoc_id, set())
        if series_id in sent:
            return
        with self.index.engine.begin() as conn:
            senders.add(conn, self.name, assoc_id, series_id)
        sent.add(series_id)

    def association_closed(self, assoc_id: int, aborted: bool = False) -> None:
        """The quiet period of the series it sent restarts now; an aborted association
        leaves them possibly incomplete."""
        with self.lock:
            series_ids = self._sent_by.pop(assoc_id, set())
            if series_ids:
                with self.index.engine.begin() as conn:
                    senders.remove(conn, self.name, assoc_id)
                    receiving = (Series.id.in_(series_ids),
                                 Series.state == SeriesState.RECEIVING.value)
                    conn.execute(update(Series).where(*receiving).values(
                        last_activity=time.time()))
                    if aborted:
                        conn.execute(update(Series).where(
                            *receiving, Series.incomplete_reason.is_(None)).values(
                            incomplete_reason=ABORTED))

