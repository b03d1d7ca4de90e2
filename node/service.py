"""`trauma-node serve`: the SCP, completion monitor, workers and HTTP server together."""

from __future__ import annotations

import logging
import signal
import threading

import uvicorn

from pipeline.models import preflight

from . import jobs
from .completion import CompletionMonitor
from .config import Settings
from .delivery import Delivery
from .http_api import create_app, server_config
from .index import Index
from .metrics import LiveFigures
from .policy import AssociationPolicy
from .receiver import Receiver
from .retention import Retention
from .scp import StorageSCP
from .spool import Spool
from .worker import OrphanWatch, WorkerPool

log = logging.getLogger("trauma_node.serve")


class Node:
    def __init__(self, settings: Settings):
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.spool = Spool(settings.spool_dir, fsync=settings.storage.fsync)
        self.index = Index(settings.database_url, durable=settings.storage.fsync)
        self.receiver = Receiver(self.index, self.spool)
        self.policy = AssociationPolicy(
            settings.node.ae_title, settings.peers, self.spool.free_bytes,
            settings.storage.min_free_disk_mb * 2**20)
        self.live = LiveFigures(spool_free_bytes=self.spool.free_bytes)
        self.scp = StorageSCP(settings, self.receiver, self.policy, self.live.counters)
        self.live.open_associations = lambda: len(self.scp.ae.active_associations)
        self.completion = CompletionMonitor(self.index, self.receiver, settings.completion,
                                            settings.selection)
        self.workers = WorkerPool(settings)
        self.orphan_watch = OrphanWatch(settings, self.index)
        self.delivery = Delivery(settings, self.index)
        self.retention = Retention(settings, self.index, self.receiver.forget_series,
                                   self.receiver.lock, self.spool.free_bytes)
        self.http: uvicorn.Server | None = None
        self._http_thread: threading.Thread | None = None
        self.stopping = threading.Event()

    def start(self) -> None:
        s = self.settings
        # A missing or gated model fails here, with what to do, not at the first study.
        models = preflight(s.pipeline, load=False)
        if models:
            log.info("model backends available: %s", ", ".join(models))
        removed = self.spool.clean_incoming()
        if removed:
            log.info("start-up: removed %d partial files (never acknowledged)", removed)
        jobs.requeue_interrupted(self.index, s.workers.max_attempts, role="serve")
        if s.workers.count == 0:
            log.warning("workers.count = 0: this node runs no analysis; jobs wait for "
                        "`trauma-node worker` sharing its database and data directory")
        if not s.peers:
            log.warning("no peers configured: any calling AE title from any host may send")
        if self.policy.disk_low():
            log.error("free disk is below storage.min_free_disk_mb (%d MB): associations "
                      "will be refused until space is freed", s.storage.min_free_disk_mb)
        self.scp.start()
        self.completion.start()
        self.workers.start()
        self.orphan_watch.start()
        self.delivery.start()
        self.retention.start()
        app = create_app(s, self.index, live=self.live)
        self.http = uvicorn.Server(server_config(app, s.node.http_bind, s.node.http_port))
        self._http_thread = threading.Thread(target=self.http.run, name="http", daemon=True)
        self._http_thread.start()
        log.info("HTTP API on http://%s:%d (data directory %s)", s.node.http_bind,
                 s.node.http_port, s.data_dir)

    def stop(self) -> None:
        log.info("stopping: no new associations; open ones may finish")
        self.scp.stop()
        self.completion.stop()
        self.workers.stop()
        self.orphan_watch.stop()
        self.delivery.stop()
        self.retention.stop()
        if self.http is not None:
            self.http.should_exit = True
            if self._http_thread is not None:
                self._http_thread.join(timeout=10)
        self.index.close()
        log.info("stopped")

    def serve_forever(self) -> None:
        """Run until SIGINT or SIGTERM."""
        def request_stop(signum, _frame):  # noqa: ANN001
            log.info("received %s", signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        self.start()
        try:
            self.stopping.wait()
        finally:
            self.stop()
