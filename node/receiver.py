"""Storing one received instance: spool file first, index row second.

The C-STORE handler answers Success only after `Receiver.store` returns, that
is after the file is renamed into the spool and its row committed. The same
SOP Instance received twice is stored once. Which associations are still
sending to which series is tracked here, so completion can wait for them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from .headers import InstanceHeader
from .index import Index, Instance, Series, SeriesState, Study
from .spool import Spool

log = logging.getLogger("trauma_node.receive")


@dataclass
class StoreResult:
    stored: bool  # False: a duplicate, already held
    series_id: int
    series_version: int


class Receiver:
    def __init__(self, index: Index, spool: Spool):
        self.index = index
        self.spool = spool
        # One writer at a time inside this process: SQLite allows one anyway,
        # and it makes the series state transitions race-free with the
        # completion monitor, which takes the same lock.
        self.lock = threading.Lock()
        self._senders: dict[int, set[int]] = {}  # series id -> association ids
        self._sent_by: dict[int, set[int]] = {}  # association id -> series ids

    # -- storing -----------------------------------------------------------
    def store(self, header: InstanceHeader, data: bytes | memoryview, transfer_syntax: str,
              calling_ae: str, assoc_id: int) -> StoreResult:
        """Write and index one instance. Raises InvalidUID, OSError."""
        relative = self.spool.relative_path(header.study_uid, header.series_uid, header.sop_uid)
        with self.index.engine.connect() as conn:
            known = conn.execute(select(Instance.series_id).where(
                Instance.sop_instance_uid == header.sop_uid)).first()
        if known is not None:
            return self._duplicate(known.series_id, assoc_id)
        size = self.spool.write(relative, data)
        with self.lock:
            try:
                return self._index(header, relative, size, transfer_syntax, calling_ae, assoc_id)
            except IntegrityError:
                # Another association stored the same SOP Instance meanwhile.
                with self.index.engine.connect() as conn:
                    series_id = conn.execute(select(Instance.series_id).where(
                        Instance.sop_instance_uid == header.sop_uid)).scalar_one()
                return self._duplicate(series_id, assoc_id)

    def _duplicate(self, series_id: int, assoc_id: int) -> StoreResult:
        with self.lock:
            self._mark_sending(series_id, assoc_id)
            with self.index.engine.connect() as conn:
                version = conn.execute(select(Series.version).where(
                    Series.id == series_id)).scalar_one()
        return StoreResult(stored=False, series_id=series_id, series_version=version)

    def _index(self, header: InstanceHeader, relative: str, size: int, transfer_syntax: str,
               calling_ae: str, assoc_id: int) -> StoreResult:
        now = time.time()
        with self.index.engine.begin() as conn:
            study_id = conn.execute(select(Study.id).where(
                Study.study_uid == header.study_uid)).scalar()
            if study_id is None:
                study_id = conn.execute(insert(Study).values(
                    study_uid=header.study_uid).returning(Study.id)).scalar_one()
            series = conn.execute(select(Series.id, Series.state, Series.version).where(
                Series.series_uid == header.series_uid)).first()
            expected = header.images_in_acquisition
            if series is None:
                series_id = conn.execute(insert(Series).values(
                    study_id=study_id, series_uid=header.series_uid, modality=header.modality,
                    state=SeriesState.RECEIVING.value, version=1, instance_count=0,
                    expected_count=expected, last_activity=now,
                ).returning(Series.id)).scalar_one()
                version = 1
                log.info("series %s v1 receiving (study %s)", header.series_uid, header.study_uid)
            else:
                series_id, version = series.id, series.version
                if series.state != SeriesState.RECEIVING.value:
                    # Late instances: a new version, processed again, never lost.
                    version += 1
                    conn.execute(update(Series).where(Series.id == series_id).values(
                        state=SeriesState.RECEIVING.value, version=version, skip_reason=None,
                        completed_at=None))
                    log.info("series %s v%d receiving (late instances after %s)",
                             header.series_uid, version, series.state)
            conn.execute(insert(Instance).values(
                series_id=series_id, sop_instance_uid=header.sop_uid,
                sop_class_uid=header.sop_class_uid, transfer_syntax_uid=transfer_syntax,
                path=relative, size_bytes=size, series_version=version,
                calling_ae=calling_ae, geometry=header.geometry()))
            values: dict = {"instance_count": Series.instance_count + 1, "last_activity": now}
            if expected:
                values["expected_count"] = expected
            conn.execute(update(Series).where(Series.id == series_id).values(**values))
        self._mark_sending(series_id, assoc_id)
        return StoreResult(stored=True, series_id=series_id, series_version=version)

    # -- who is still sending ------------------------------------------------
    def _mark_sending(self, series_id: int, assoc_id: int) -> None:
        self._senders.setdefault(series_id, set()).add(assoc_id)
        self._sent_by.setdefault(assoc_id, set()).add(series_id)

    def association_closed(self, assoc_id: int) -> None:
        """The quiet period of the series it sent restarts now."""
        with self.lock:
            series_ids = self._sent_by.pop(assoc_id, set())
            for series_id in series_ids:
                senders = self._senders.get(series_id)
                if senders is not None:
                    senders.discard(assoc_id)
                    if not senders:
                        del self._senders[series_id]
            if series_ids:
                with self.index.engine.begin() as conn:
                    conn.execute(update(Series).where(
                        Series.id.in_(series_ids),
                        Series.state == SeriesState.RECEIVING.value,
                    ).values(last_activity=time.time()))

    def is_being_sent(self, series_id: int) -> bool:
        """Call with the lock held."""
        return bool(self._senders.get(series_id))
