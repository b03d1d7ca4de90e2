"""The outbox: one row per result object and destination, until it is delivered.

Rows are written in the same database as the jobs, so results survive a
restart and a destination that is down gets them when it comes back. A row
that has been sent is never sent again (no export loop); one that failed
`delivery.max_attempts` times is a dead letter until `trauma-node retry`.

Each attempt is recorded as started (committed) before its C-STORE goes out, and the
mark is cleared with its answer. A row still marked when it is next due was cut off
(a crash, a stop, no answer): the destination may hold it already, so node.work.delivery
asks before sending it again. The table is declared in node.store.tables.

Rows of kind "verdict" (node.verdicts.archive) carry a study's verdict SR rather than a
series version's result: their series_uid is the study's verdict series, their
series_version the newest verdict id the SR holds.
"""

from __future__ import annotations

import time

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from node.config import DeliverySection
from node.store.database import Index, utcnow
from node.store.tables import DeliveryAttempts, OutboxItem, OutboxState


def enqueue(index: Index, items: list[dict]) -> int:
    """Add rows (study_uid, series_uid, series_version, kind, sop_instance_uid, path,
    destination); a row that exists already is left as it is. Returns rows added."""
    if not items:
        return 0
    with index.engine.begin() as conn:
        if index.engine.dialect.name == "sqlite":
            stmt = sqlite_insert(OutboxItem).values(items).on_conflict_do_nothing()
            return conn.execute(stmt).rowcount
        added = 0
        for item in items:  # portable path for other databases
            exists = conn.execute(select(OutboxItem.id).where(
                OutboxItem.sop_instance_uid == item["sop_instance_uid"],
                OutboxItem.destination == item["destination"])).first()
            if exists is None:
                conn.execute(OutboxItem.__table__.insert().values(**item))
                added += 1
        return added


def due(index: Index, now: float | None = None) -> list[OutboxItem]:
    now = time.time() if now is None else now
    with index.session() as session:
        return list(session.execute(select(OutboxItem).where(
            OutboxItem.state == OutboxState.PENDING.value,
            OutboxItem.next_attempt_at <= now).order_by(OutboxItem.id)).scalars())


def backoff_s(attempts: int, policy: DeliverySection) -> float:
    """Exponential: base, 2 x base, 4 x base ... capped at max_delay_s."""
    return min(policy.max_delay_s, policy.base_delay_s * 2 ** max(0, attempts - 1))


def mark_started(index: Index, item_id: int) -> None:
    """Committed before the C-STORE goes out: from here until its answer is recorded,
    the row is in doubt."""
    with index.engine.begin() as conn:
        conn.execute(update(OutboxItem).where(OutboxItem.id == item_id).values(
            attempt_started_at=time.time()))


def mark_sent(index: Index, item_id: int,
              table: type[DeliveryAttempts] = OutboxItem) -> None:
    """The destination holds it: acknowledged, or confirmed after a cut-off attempt.
    table: OutboxItem, or another with the same attempt columns (node.alerts.store)."""
    with index.engine.begin() as conn:
        conn.execute(update(table).where(table.id == item_id).values(
            state=OutboxState.SENT.value, sent_at=utcnow(), last_error=None,
            attempts=table.attempts + 1, attempt_started_at=None))


def mark_failed(index: Index, item: DeliveryAttempts, error: str, policy: DeliverySection,
                now: float | None = None, answered: bool = False,
                permanent: bool = False) -> str:
    """Record a failed attempt; schedule the next one or make it a dead letter.
    answered: the destination refused this attempt with a status, so it does not hold
    the object; otherwise a row in doubt stays in doubt. permanent: it refused it for
    good (retrying cannot help), so it is a dead letter now. item: an OutboxItem, or a
    row of another table with the same attempt columns (node.alerts.store)."""
    now = time.time() if now is None else now
    attempts = item.attempts + 1
    state = OutboxState.DEAD if permanent or attempts >= policy.max_attempts \
        else OutboxState.PENDING
    doubt = {"attempt_started_at": None} if answered else {}
    table = type(item)
    with index.engine.begin() as conn:
        conn.execute(update(table).where(table.id == item.id).values(
            state=state.value, attempts=attempts, last_error=error[:500],
            next_attempt_at=now + backoff_s(attempts, policy), **doubt))
    return state.value


def withdraw(conn: Connection, series_uid: str, version: int) -> int:
    """The unsent rows of one series version are withdrawn (in the caller's transaction,
    e.g. the one that starts the later version); returns how many."""
    return conn.execute(update(OutboxItem).where(
        OutboxItem.series_uid == series_uid, OutboxItem.series_version == version,
        OutboxItem.state == OutboxState.PENDING.value).values(
        state=OutboxState.WITHDRAWN.value,
        last_error="withdrawn: a later version of the series arrived")).rowcount


def never_sent(conn: Connection, series_uid: str, versions: list[int]) -> list[int]:
    """Those of the series' versions none of whose results reached a destination (or may
    have: an attempt cut off is in doubt)."""
    sent = set(conn.execute(select(OutboxItem.series_version).where(
        OutboxItem.series_uid == series_uid, OutboxItem.series_version.in_(versions),
        (OutboxItem.state == OutboxState.SENT.value)
        | OutboxItem.attempt_started_at.is_not(None))).scalars())
    return [version for version in versions if version not in sent]


def retry_dead(index: Index, table: type[DeliveryAttempts] = OutboxItem) -> int:
    """Dead letters go back to pending with a fresh attempt count."""
    with index.engine.begin() as conn:
        return conn.execute(update(table).where(
            table.state == OutboxState.DEAD.value).values(
            state=OutboxState.PENDING.value, attempts=0, next_attempt_at=0.0)).rowcount


def items_for_study(index: Index, study_uid: str) -> list[dict]:
    with index.session() as session:
        rows = session.execute(select(OutboxItem).where(
            OutboxItem.study_uid == study_uid).order_by(OutboxItem.id)).scalars()
        return [{"kind": r.kind, "sop_instance_uid": r.sop_instance_uid,
                 "series_uid": r.series_uid, "series_version": r.series_version,
                 "destination": r.destination, "state": r.state, "attempts": r.attempts,
                 "last_error": r.last_error} for r in rows]
