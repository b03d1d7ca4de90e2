"""Receiving on every core: `serve` and its receiving processes share one listening socket.

One process receives under one GIL, so associations at once add nothing past one core
(bench/ingest.py). With network.receivers above 1, `serve` binds the DICOM port itself
and starts receivers - 1 receiving processes (spawned, not forked: no copies of its
threads) that accept on the same socket beside its own SCP; the kernel hands each
connection to one of them (node.dicom.connections.GuardedServer spreads them). Each has
its own pynetdicom AE, spool writer and index connection, and stores exactly as `serve`
does: acknowledge after commit, the association policy, TLS and completion unchanged,
because they meet only in the database (node.store.senders: who sends what).

What only `serve` keeps is sent to it, through a pipe from each: the process's counters
(its snapshot, within FLUSH_S of a change and at its end: /metrics adds them up) and
its audit events (the audit trail writes one file). network.max_associations holds for the node as a
whole: each process counts its open associations in its slots of a shared array, and the
sum is checked when an association is requested (SharedLoad). (Pipes and a lock-free array: no
multiprocessing semaphores, which `serve`'s immediate exit would leave behind.)

A receiving process that dies (killed, out of memory) is replaced; the series its
associations were sending are marked possibly incomplete (node.store.senders.reap).
It ends with `serve`: SIGTERM from `serve` (or the group's), and if `serve` itself is
killed, with it (PR_SET_PDEATHSIG, and a watch on the parent).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from node.config import Settings, node_identity
from node.logs import flush_repeated_lines, setup_logging
from node.metrics import Counters
from node.stopping import exit_now, on_stop_signals
from node.store import senders

log = logging.getLogger("trauma_node.scp")

FLUSH_S = 0.1  # how often a receiving process looks whether its counters changed
RESTART_DELAY_S = 1.0
START_TIMEOUT_S = 30.0  # for the receiving processes to accept, at start-up
MAX_AUTO = 4  # network.receivers = 0: one per core, at most this many
_PR_SET_PDEATHSIG = 1


ACCEPT_DELAY_S = 0.003  # per association or connection more than the idlest process has
MAX_ACCEPT_DELAY_S = 0.012


class SharedLoad:
    """The node's receiving processes' load, in an array they share (no lock: each writes
    only its own two slots, under a thread lock of its own): per process, its open
    associations (their sum is held to network.max_associations) and its connections
    accepted but not yet associated. A process busier than the idlest waits a little
    before it accepts (node.dicom.connections), so that the idlest takes the connection."""

    def __init__(self, counts: Any, slot: int, max_associations: int, pending_s: float):
        self.counts, self.slot = counts, slot
        self.max_associations = max_associations
        self.pending_s = pending_s  # a connection not associated by then is over anyway
        self._lock = threading.Lock()
        self._pending: list[float] = []  # when each connection not yet associated came
        self._counted: set[int] = set()  # associations in our count

    def _publish_pending(self, now: float) -> None:
        self._pending = [t for t in self._pending if now - t < self.pending_s]
        self.counts[2 * self.slot + 1] = len(self._pending)

    def accepted(self) -> None:
        with self._lock:
            now = time.monotonic()
            self._pending.append(now)
            self._publish_pending(now)

    def request_arrived(self) -> None:
        """The connection is an association now, or was closed before: no longer pending."""
        with self._lock:
            if self._pending:
                self._pending.pop(0)
            self._publish_pending(time.monotonic())

    def count_in(self, key: int) -> bool:
        """One more association in the node's total, if there is room. Counted first, then
        the total checked: two processes at once may both refuse, never both exceed it."""
        with self._lock:
            self.counts[2 * self.slot] += 1
            if sum(self.counts[0::2]) > self.max_associations:
                self.counts[2 * self.slot] -= 1
                return False
            self._counted.add(key)
            return True

    def count_out(self, key: int) -> None:
        with self._lock:
            if key in self._counted:
                self._counted.discard(key)
                self.counts[2 * self.slot] -= 1

    def open_associations(self) -> int:
        return sum(self.counts[0::2])

    def accept_delay(self) -> float:
        with self._lock:
            self._publish_pending(time.monotonic())
        loads = [a + p for a, p in zip(self.counts[0::2], self.counts[1::2])]
        extra = loads[self.slot] - min(loads)
        return min(MAX_ACCEPT_DELAY_S, ACCEPT_DELAY_S * extra) if extra > 0 else 0.0


def shared_load(settings: Settings, counts: Any, slot: int) -> SharedLoad:
    net = settings.network
    return SharedLoad(counts, slot, net.max_associations, net.association_request_timeout_s + 1)


def receiver_count(settings: Settings) -> int:
    configured = settings.network.receivers
    return configured or max(1, min(MAX_AUTO, os.cpu_count() or 1))


def listening_socket(settings: Settings) -> socket.socket:
    """The DICOM port, bound and listening, for every receiving process to accept on."""
    node = settings.node
    family = socket.AF_INET6 if ":" in node.dicom_bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((node.dicom_bind, node.dicom_port))
    sock.listen(max(64, settings.network.max_associations * 4))
    return sock


class _ToParent:
    """The pipe to `serve`, shared by the process's threads."""

    def __init__(self, pipe: Connection):
        self.pipe = pipe
        self._lock = threading.Lock()

    def send(self, event: tuple) -> None:
        with self._lock:
            try:
                self.pipe.send(event)
            except OSError:  # serve is gone: this process ends with it
                pass


class _AuditToParent:
    """What StorageSCP tells the audit trail, sent to `serve`, which writes it."""

    def __init__(self, parent: _ToParent):
        self._parent = parent

    def __getattr__(self, method: str) -> Any:
        def send(*args: Any, **kwargs: Any) -> None:
            self._parent.send(("audit", method, args, kwargs))
        return send


def _exit_with_parent(parent_pid: int) -> None:
    """A receiving process never outlives `serve`: another `serve` may bind the port."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the watch below alone
        pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def receiver_main(settings: Settings, listen_socket: socket.socket, pipe: Connection,
                  load_counts: Any, slot: int, parent_pid: int) -> None:
    """A receiving process: an SCP on the shared socket until SIGTERM."""
    from node.dicom.policy import AssociationPolicy
    from node.dicom.scp import StorageSCP
    from node.store.database import Index
    from node.store.receiving import Receiver
    from node.store.spool import Spool

    _exit_with_parent(parent_pid)
    setup_logging(settings.node.log_level)
    stopping = threading.Event()
    on_stop_signals(stopping)
    index = Index(settings.database_url, durable=settings.storage.fsync)
    spool = Spool(settings.spool_dir, fsync=settings.storage.fsync)
    receiver = Receiver(index, spool, senders.receiver_name(node_identity(settings)))
    heartbeat = senders.Heartbeat(index, receiver.name)
    counters = Counters()
    parent = _ToParent(pipe)
    policy = AssociationPolicy(settings.node.ae_title, settings.peers, spool.free_bytes,
                               settings.storage.min_free_disk_mb * 2**20)
    scp = StorageSCP(settings, receiver, policy, counters, _AuditToParent(parent),
                     shared_load(settings, load_counts, slot))
    heartbeat.start()
    scp.start(listen_socket)
    parent.send(("ready", slot))

    sent: dict = {}

    def flush() -> None:
        nonlocal sent
        snapshot = counters.snapshot()
        if snapshot != sent:
            parent.send(("counters", receiver.name, snapshot))
            sent = snapshot

    while not stopping.wait(FLUSH_S):
        flush()
    scp.stop(grace_s=settings.node.stop_timeout_s / 2)
    heartbeat.stop()
    flush()
    index.close()
    flush_repeated_lines()
    pipe.close()
    exit_now(0)


class ReceiverProcesses:
    """`serve`'s other receiving processes: started, replaced when they die, stopped."""

    def __init__(self, settings: Settings, count: int, listen_socket: socket.socket,
                 counters: Counters, audit: Any, index: Any):
        self.settings, self.count = settings, count
        self.listen_socket, self.counters, self.audit, self.index = (
            listen_socket, counters, audit, index)
        self.ctx = mp.get_context("spawn")
        # Two counts per process (SharedLoad): serve's own SCP is slot 0, process i slot i + 1.
        self.load_counts = self.ctx.RawArray("i", 2 * (count + 1))
        self._ready: set[int] = set()
        self.processes: list[mp.process.BaseProcess] = []
        self._pipes: dict[int, Connection] = {}  # slot -> the read end of its process's pipe
        self._pipes_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start them and wait until each accepts (or timeout_s: then they join later)."""
        for i in range(self.count):
            self.processes.append(self._spawn(i + 1))
        for target, name in ((self._drain, "receiver-events"),
                             (self._supervise, "receiver-supervisor")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        deadline = time.monotonic() + timeout_s
        while len(self._ready) < self.count and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(self._ready) < self.count:
            log.warning("%d of %d receiving processes not ready after %.0f s",
                        self.count - len(self._ready), self.count, timeout_s)

    def shared_load(self) -> SharedLoad:
        """serve's own SCP's share (slot 0)."""
        return shared_load(self.settings, self.load_counts, 0)

    def _spawn(self, slot: int) -> mp.process.BaseProcess:
        # A process replaced: its associations and connections ended with it.
        self.load_counts[2 * slot] = self.load_counts[2 * slot + 1] = 0
        reader, writer = self.ctx.Pipe(duplex=False)
        process = self.ctx.Process(
            target=receiver_main, name=f"receiver-{slot}", daemon=False,
            args=(self.settings, self.listen_socket, writer, self.load_counts, slot,
                  os.getpid()))
        process.start()
        writer.close()  # the child's now: EOF here when it ends
        with self._pipes_lock:
            self._pipes[slot] = reader
        return process

    def _drain(self) -> None:
        """Counters and audit events from the receiving processes, until each pipe ends."""
        while True:
            with self._pipes_lock:
                pipes = list(self._pipes.items())
            if not pipes:
                if self._stopping.is_set():
                    return
                time.sleep(0.2)
                continue
            for pipe in wait([p for _, p in pipes], timeout=0.2):
                try:
                    self._take(pipe.recv())
                except (EOFError, OSError):  # the process ended
                    with self._pipes_lock:
                        self._pipes = {k: v for k, v in self._pipes.items() if v is not pipe}
                    pipe.close()

    def _take(self, event: tuple) -> None:
        try:
            if event[0] == "counters":
                self.counters.merge(event[1], event[2])
            elif event[0] == "ready":
                self._ready.add(event[1])
            elif event[0] == "audit" and self.audit is not None:
                getattr(self.audit, event[1])(*event[2], **event[3])
        except Exception:  # noqa: BLE001 - one bad event never stops the others
            log.exception("event from a receiving process not taken")

    def _supervise(self) -> None:
        identity = node_identity(self.settings)
        while not self._stopping.wait(0.5):
            for i, process in enumerate(self.processes):
                if process.is_alive() or self._stopping.is_set():
                    continue
                name = senders.receiver_name(identity, process.pid)
                marked = senders.reap(self.index, [name])
                log.error("receiving process %d ended (exit code %s): %d series it was "
                          "receiving marked possibly incomplete; starting another",
                          process.pid, process.exitcode, marked)
                if self._stopping.wait(RESTART_DELAY_S):
                    return
                self.processes[i] = self._spawn(i + 1)

    def stop(self, deadline: float) -> list[str]:
        """SIGTERM to each (its senders get half the stop time, as in `serve`); those not
        ended by deadline (time.monotonic()) are killed. Returns those that were late."""
        self._stopping.set()
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        late = []
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                late.append(f"receiver {process.pid}")
                process.kill()
                process.join(1.0)
        for thread in self._threads:  # the events drained: the pipes ended with the processes
            thread.join(1.0)
        return late

    def open_associations(self) -> int:
        return sum(self.load_counts[0::2])
