"""Who is sending which series right now, across every receiving process and node.

A node receives in several processes (node.dicom.receivers), and several nodes may share
one database (DESIGN.md, "Queue"). Completion must wait for every association still
sending a series, whichever process holds it, and a series whose sending process died
must be marked possibly incomplete. Both need the open associations in the database:

- each receiving process has a name, `<node>/<pid>` (node.config.node_identity), and beats
  in `receivers` every BEAT_S;
- the first instance an association brings of a series adds a row to `senders`
  (receiver, association number, series); the association's end removes its rows;
- completion treats a series with a sender row as still arriving;
- a receiver that stopped beating for stale_after_s (its host or process died), or one of
  this node's earlier processes found at start-up or by the supervisor (it crashed),
  is reaped: its series still receiving are marked possibly incomplete, its rows removed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from node.store.database import Index, Series, SeriesState, utcnow
from node.store.tables import ReceiverBeat, Sender

log = logging.getLogger("trauma_node.receive")

BEAT_S = 5.0  # how often a receiving process says it is alive
NODE_STOPPED = "the node stopped while it was being received"


def receiver_name(node: str, pid: int | None = None) -> str:
    return f"{node}/{os.getpid() if pid is None else pid}"


def add(conn: Connection, receiver: str, association: int, series_id: int) -> None:
    """The association sends this series. Only its receiver's one thread for the
    association adds its rows, so looking first cannot race."""
    if conn.execute(select(Sender.id).where(
            Sender.series_id == series_id, Sender.receiver == receiver,
            Sender.association == association)).first() is None:
        conn.execute(insert(Sender).values(series_id=series_id, receiver=receiver,
                                           association=association))


def remove(conn: Connection, receiver: str, association: int) -> None:
    conn.execute(delete(Sender).where(Sender.receiver == receiver,
                                      Sender.association == association))


def being_sent(conn: Connection) -> set[int]:
    """The series some open association is sending."""
    return set(conn.execute(select(Sender.series_id).distinct()).scalars())


def beat(index: Index, receiver: str) -> None:
    with index.engine.begin() as conn:
        if not conn.execute(update(ReceiverBeat).where(ReceiverBeat.name == receiver).values(
                last_seen=utcnow())).rowcount:
            conn.execute(insert(ReceiverBeat).values(name=receiver, pid=os.getpid()))


def reap(index: Index, receivers: list[str], reason: str = NODE_STOPPED) -> int:
    """These receivers are gone: the series their associations were sending are marked
    possibly incomplete (those still receiving), their rows removed. Returns how many
    series were marked."""
    if not receivers:
        return 0
    with index.engine.begin() as conn:
        series = select(Sender.series_id).where(Sender.receiver.in_(receivers))
        marked = conn.execute(update(Series).where(
            Series.id.in_(series), Series.state == SeriesState.RECEIVING.value,
            Series.incomplete_reason.is_(None)).values(incomplete_reason=reason)).rowcount
        conn.execute(delete(Sender).where(Sender.receiver.in_(receivers)))
        conn.execute(delete(ReceiverBeat).where(ReceiverBeat.name.in_(receivers)))
    return marked


def reap_earlier(index: Index, node: str, alive: set[str]) -> int:
    """At start-up, and when the supervisor finds one dead: this node's receiving
    processes other than those alive left their associations behind (a crash, SIGKILL)."""
    prefix = f"{node}/"
    with index.engine.connect() as conn:
        names = set(conn.execute(select(Sender.receiver).where(
            func.substr(Sender.receiver, 1, len(prefix)) == prefix).distinct()).scalars())
        names |= set(conn.execute(select(ReceiverBeat.name).where(
            func.substr(ReceiverBeat.name, 1, len(prefix)) == prefix)).scalars())
    return reap(index, sorted(names - alive))


def reap_silent(index: Index, stale_after_s: float) -> int:
    """Receivers of any node silent for stale_after_s (their host or process died);
    returns how many series were marked."""
    cutoff = utcnow() - dt.timedelta(seconds=stale_after_s)
    with index.engine.connect() as conn:
        silent = list(conn.execute(select(ReceiverBeat.name).where(
            ReceiverBeat.last_seen < cutoff)).scalars())
    marked = reap(index, silent)
    if silent:
        log.warning("receiving processes silent for %.0f s: %s; %d series they were receiving "
                    "marked possibly incomplete", stale_after_s, ", ".join(silent), marked)
    return marked


class Heartbeat:
    """A receiving process's beat, in a thread; forget() at a clean stop."""

    def __init__(self, index: Index, receiver: str):
        self.index, self.receiver = index, receiver
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        beat(self.index, self.receiver)
        self._thread = threading.Thread(target=self._run, name="receiver-beat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(BEAT_S):
            try:
                beat(self.index, self.receiver)
            except Exception as exc:  # noqa: BLE001 - the next beat retries
                log.warning("receiver heartbeat failed: %s", exc)

    def stop(self) -> None:
        """A clean stop: its associations are closed (and recorded so) already."""
        self._stop.set()
        try:
            reap(self.index, [self.receiver])
        except Exception as exc:  # noqa: BLE001 - the next start reaps it instead
            log.warning("receiver %s not forgotten: %s", self.receiver, exc)
