"""Delivery: C-STORE the outbox to its destinations, with backoff and dead letters."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from pathlib import Path

from . import outbox
from .config import Destination, Settings
from .index import Index
from .scu import AssociationFailed, send
from .tls import client_context

log = logging.getLogger("trauma_node.delivery")


class Delivery:
    def __init__(self, settings: Settings, index: Index):
        self.settings = settings
        self.index = index
        self.destinations = {d.name: d for d in settings.destinations}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def deliver_due(self) -> int:
        """One pass: send everything due, one association per destination. Returns sent."""
        by_destination: dict[str, list[outbox.OutboxItem]] = defaultdict(list)
        for item in outbox.due(self.index):
            by_destination[item.destination].append(item)
        sent = 0
        for name, items in by_destination.items():
            sent += self._deliver(name, items)
        return sent

    def _deliver(self, name: str, items: list[outbox.OutboxItem]) -> int:
        policy = self.settings.delivery
        dest = self.destinations.get(name)
        if dest is None:
            for item in items:
                outbox.mark_failed(self.index, item, f"destination {name!r} is no longer "
                                   "configured", policy)
            return 0
        by_path = {str(Path(item.path)): item for item in items}
        try:
            report = send([Path(p) for p in by_path], dest.host, dest.port, dest.ae_title,
                          policy.calling_ae_title, self._tls(dest), policy.timeout_s)
        except (AssociationFailed, OSError) as exc:
            states = [outbox.mark_failed(self.index, item, str(exc), policy) for item in items]
            log.warning("delivery to %s (%s@%s:%d) failed for %d objects: %s; %d dead letters",
                        name, dest.ae_title, dest.host, dest.port, len(items), exc,
                        states.count("dead"))
            return 0
        failures = {**report.failed, **report.skipped}
        for path, item in by_path.items():
            if path in failures:
                state = outbox.mark_failed(self.index, item, failures[path], policy)
                log.warning("delivery of %s %s to %s failed: %s (%s)", item.kind,
                            item.sop_instance_uid, name, failures[path], state)
            else:
                outbox.mark_sent(self.index, item.id)
                log.info("delivered %s %s to %s", item.kind, item.sop_instance_uid, name)
        return report.sent

    def _tls(self, dest: Destination):
        return client_context(self.settings.tls) if dest.tls else None

    def _run(self) -> None:
        while not self._stop.wait(self.settings.delivery.check_interval_s):
            try:
                self.deliver_due()
            except Exception:  # keep delivering; the next pass retries
                log.exception("delivery pass failed")

    def start(self) -> None:
        if not self.destinations:
            log.warning("no destinations configured: results stay in the data directory")
        self._thread = threading.Thread(target=self._run, name="delivery", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> bool:
        """timeout_s: how long to wait for a delivery under way (default: its own timeout).
        One cut off stays pending and is sent again at the next start. False when one was
        still under way."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.delivery.timeout_s + 5
                              if timeout_s is None else max(0.0, timeout_s))
        return self._thread is None or not self._thread.is_alive()
