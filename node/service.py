"""`trauma-node serve`: the SCP, completion monitor, workers and HTTP server together."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn

from pipeline.models import preflight

from node.store import jobs, senders
from node.alerts.delivery import Alerts
from node.audit.trail import AuditTrail, study_patient_lookup
from node.store.completion import CompletionMonitor
from node.config import Settings, node_identity
from node.work.delivery import Delivery
from node.http.app import create_app, server_config
from node.store.database import Index
from node.logs import flush_repeated_lines
from node.metrics import LiveFigures
from node.dicom.policy import AssociationPolicy
from node.store.receiving import Receiver
from node.store.retention import Retention
from node.dicom import acceptor_choice
from node.dicom.receivers import ReceiverProcesses, listening_socket, receiver_count
from node.dicom.scp import StorageSCP
from node.store.spool import Spool
from node.stopping import STOP_RESERVE_S, exit_by, exit_now, on_stop_signals, run_parallel
from node.prior.lookup import PriorLookup
from node.verdicts.archive import VerdictArchive
from node.work.worker import OrphanWatch, WorkerPool

log = logging.getLogger("trauma_node.serve")


class Node:
    def __init__(self, settings: Settings):
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.spool = Spool(settings.spool_dir, fsync=settings.storage.fsync)
        self.index = Index(settings.database_url, durable=settings.storage.fsync)
        self.identity = node_identity(settings)
        self.receiver = Receiver(self.index, self.spool, senders.receiver_name(self.identity))
        self.heartbeat = senders.Heartbeat(self.index, self.receiver.name)
        self.policy = AssociationPolicy(
            settings.node.ae_title, settings.peers, self.spool.free_bytes,
            settings.storage.min_free_disk_mb * 2**20)
        self.live = LiveFigures(spool_free_bytes=self.spool.free_bytes)
        self.audit = AuditTrail(settings, self.live.counters,
                                study_patient_lookup(self.index, settings.spool_dir))
        self.live.audit_queued = self.audit.queued
        # Receiving on every core: this process and receivers - 1 others on one socket.
        count = receiver_count(settings)
        if count > 1 and acceptor_choice.fast_acceptor() is None:
            log.warning("network.receivers = %d needs the fast acceptor: receiving in one "
                        "process", count)
            count = 1
        self.listen_socket = listening_socket(settings) if count > 1 else None
        self.receivers = (ReceiverProcesses(settings, count - 1, self.listen_socket,
                                            self.live.counters, self.audit, self.index)
                          if self.listen_socket is not None else None)
        self.scp = StorageSCP(settings, self.receiver, self.policy, self.live.counters,
                              self.audit, self.receivers and self.receivers.shared_load())
        self.live.open_associations = (
            self.receivers.open_associations if self.receivers is not None
            else lambda: len(self.scp.ae.active_associations))
        self.completion = CompletionMonitor(self.index, self.receiver, settings.completion,
                                            settings.selection)
        self.workers = WorkerPool(settings, self.index, counters=self.live.counters)
        self.orphan_watch = OrphanWatch(settings, self.index)
        self.delivery = Delivery(settings, self.index, self.live.counters, self.audit)
        self.alerts = Alerts(settings, self.index, self.identity, self.live.counters)
        self.prior_lookup = PriorLookup(settings, self.index)
        self.verdict_archive = VerdictArchive(settings, self.index)
        self.retention = Retention(settings, self.index, self.receiver.forget_series,
                                   self.receiver.lock, self.spool.free_bytes)
        self.http: uvicorn.Server | None = None
        self._http_thread: threading.Thread | None = None
        self.stopping = threading.Event()

    def start(self) -> None:
        s = self.settings
        self.audit.start()
        changed = self.audit.check_configuration(s)
        if changed:
            log.warning("the configuration changed since the last start (%s): audited",
                        ", ".join(changed))
        # A missing or gated model fails here, with what to do, not at the first study.
        models = preflight(s.pipeline, load=False)
        if models:
            log.info("model backends available: %s", ", ".join(models))
        removed = self.spool.clean_incoming()
        if removed:
            log.info("start-up: removed %d partial files (never acknowledged)", removed)
        jobs.requeue_interrupted(self.index, s.workers.max_attempts, role="serve",
                                 node=self.identity)
        # This node's earlier processes (a crash) left their associations' series cut short.
        cut_short = senders.reap_earlier(self.index, self.identity, alive=set())
        if cut_short:
            log.warning("start-up: %d series were still being received when the node stopped: "
                        "their results will be held %g s as possibly incomplete "
                        "(completion.incomplete_hold_s)", cut_short, s.completion.incomplete_hold_s)
        if s.workers.count == 0:
            log.warning("workers.count = 0: this node runs no analysis; jobs wait for "
                        "`trauma-node worker` sharing its database and data directory")
        if not s.peers:
            log.warning("no peers configured: any calling AE title from any host may send")
        if self.policy.disk_low():
            log.error("free disk is below storage.min_free_disk_mb (%d MB): associations "
                      "will be refused until space is freed", s.storage.min_free_disk_mb)
        self.heartbeat.start()
        self.scp.start(self.listen_socket)
        if self.receivers is not None:
            self.receivers.start()
            log.info("receiving in %d processes on one socket (network.receivers)",
                     self.receivers.count + 1)
        self.completion.start()
        self.workers.start()
        self.orphan_watch.start()
        self.delivery.start()
        self.alerts.start()
        self.retention.start()
        self.prior_lookup.start()
        self.verdict_archive.start()
        app = create_app(s, self.index, live=self.live, audit=self.audit)
        self.http = uvicorn.Server(server_config(app, s.node.http_bind, s.node.http_port, s.node.stop_timeout_s))
        self._http_thread = threading.Thread(target=self.http.run, name="http", daemon=True)
        self._http_thread.start()
        log.info("HTTP API on http://%s:%d (data directory %s)", s.node.http_bind,
                 s.node.http_port, s.data_dir)
        self.audit.application(started=True)

    def stop(self) -> list[str]:
        """Everything stops at once, each part within node.stop_timeout_s; whatever has not
        by then ends with the process (node.stopping). Returns the parts still busy."""
        timeout = self.settings.node.stop_timeout_s
        deadline = time.monotonic() + timeout
        exit_by(deadline)
        log.info("stopping within %.0f s: no new associations; open ones may finish", timeout)
        until = deadline - STOP_RESERVE_S
        self.stop_deadline = until
        if self.http is not None:
            self.http.should_exit = True
        late = run_parallel({
            # Senders get half the time to finish; then they are aborted.
            "dicom": lambda: self.scp.stop(grace_s=timeout / 2),
            "receivers": self._stop_receivers,
            "workers": lambda: self.workers.stop(until - time.monotonic()),
            "completion": self.completion.stop,
            "orphan-watch": self.orphan_watch.stop,
            "delivery": lambda: self.delivery.stop(until - time.monotonic()),
            "alerts": lambda: self.alerts.stop(until - time.monotonic()),
            "retention": lambda: self.retention.stop(until - time.monotonic()),
            "prior-lookup": self.prior_lookup.stop,
            "verdict-archive": lambda: self.verdict_archive.stop(until - time.monotonic()),
            "http": self._stop_http,
        }, until) + self.workers.busy()
        self.heartbeat.stop()
        if late:
            log.warning("stopping: %s still busy; they end with the process", ", ".join(late))
        self.index.close()
        self.audit.application(started=False)
        self.audit.close(max(0.5, min(2.0, deadline - time.monotonic() - 0.5)))
        flush_repeated_lines()
        log.info("stopped")
        return late

    def _stop_receivers(self) -> bool:
        if self.receivers is None:
            return True
        late = self.receivers.stop(self.stop_deadline)
        if late:
            log.warning("stopping: %s killed", ", ".join(late))
        return not late

    def _stop_http(self) -> bool:
        """Open answer streams get a few seconds (node.http.app), then are stored as cut off."""
        if self._http_thread is not None:
            self._http_thread.join(self.settings.node.stop_timeout_s)
        return self._http_thread is None or not self._http_thread.is_alive()

    def serve_forever(self) -> None:
        """Run until SIGINT or SIGTERM."""
        on_stop_signals(self.stopping)
        self.start()
        try:
            self.stopping.wait()
        finally:
            self.stop()
            # Everything that matters has stopped (acknowledged data was on disk already,
            # the index is closed, jobs cut off are queued). Threads still busy, a delivery
            # cut off say, must not run on into the interpreter's shutdown, which they can
            # hang or crash.
            exit_now(0)
