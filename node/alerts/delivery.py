"""The two threads of alerting in `serve`: the watcher finds finished jobs not yet
checked and queues their alerts (node.alerts.store), every WATCH_INTERVAL_S; the sender
sends the alerts due, one receiver kind per module, with backoff and dead letters.
Neither runs without [[alerts]] receivers."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from node.config import AlertReceiver, Settings
from node.metrics import ALERTS, Counters
from node.store.database import Index
from node.store import outbox
from node.store.tables import AlertItem
from node.alerts import content, fhir, hl7v2, store, webhook
from node.alerts.outcome import AlertNotDelivered
from node.alerts.triggers import fired

log = logging.getLogger("trauma_node.alerts")

WATCH_INTERVAL_S = 0.5
SEND_INTERVAL_S = 0.2
SENDERS: dict[str, Callable[[content.AlertContent, AlertReceiver], None]] = {
    "webhook": webhook.send, "fhir": fhir.send, "hl7": hl7v2.send}


class Alerts:
    def __init__(self, settings: Settings, index: Index, node: str,
                 counters: Counters | None = None):
        self.settings, self.index, self.node = settings, index, node
        self.counters = counters or Counters()
        self.receivers = {r.name: r for r in settings.alerts}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def check_finished(self) -> int:
        """One watcher pass; returns alerts queued."""
        queued = 0
        for job in store.unchecked_jobs(self.index):
            met = fired(job.result)
            added = store.record(self.index, job, met, self.settings.alerts)
            if added:
                log.info("job %d (series %s v%d): %s: %d alerts queued", job.id,
                         job.series_uid, job.series_version, ", ".join(met), added)
            queued += added
        return queued

    def send_due(self) -> int:
        """One sender pass; returns alerts delivered."""
        sent = 0
        for item in store.due(self.index):
            receiver = self.receivers.get(item.receiver)
            if receiver is None:
                outbox.mark_failed(self.index, item, f"receiver {item.receiver!r} is no longer "
                                   "configured in [[alerts]]", self.settings.delivery,
                                   answered=True, permanent=True)
                continue
            if store.claim(self.index, item, in_flight_s=receiver.timeout_s + 5):
                sent += self._send(item, receiver)
        return sent

    def _send(self, item: AlertItem, receiver: AlertReceiver) -> int:
        try:
            alert = content.load(self.index, self.settings.spool_dir, item, self.node)
            SENDERS[receiver.kind](alert, receiver)
        except AlertNotDelivered as exc:
            # The attempt is over either way: the mark goes (answered=True), so the next one
            # waits only for the backoff; an alert that may have arrived goes again by its id.
            state = outbox.mark_failed(self.index, item, str(exc), self.settings.delivery,
                                       permanent=exc.permanent, answered=True)
            self.counters.add(ALERTS, "dead" if state == "dead" else "failed")
            log.warning("alert %s to %s (%s) not delivered: %s (%s%s)", item.alert_id,
                        receiver.name, receiver.kind, exc, state, "" if exc.answered else
                        "; it may have arrived: sent again with the same id")
            return 0
        except ValueError as exc:  # a payload that does not validate: it never will
            outbox.mark_failed(self.index, item, f"invalid payload: {exc}"[:500],
                               self.settings.delivery, answered=True, permanent=True)
            self.counters.add(ALERTS, "dead")
            log.error("alert %s to %s: invalid payload, a dead letter: %s", item.alert_id,
                      receiver.name, exc)
            return 0
        outbox.mark_sent(self.index, item.id, AlertItem)
        self.counters.add(ALERTS, "sent")
        log.info("alert %s (%s, series %s v%d) delivered to %s (%s)", item.alert_id,
                 item.triggers, item.series_uid, item.series_version, receiver.name,
                 receiver.kind)
        return 1

    def _loop(self, interval_s: float, step: Callable[[], int], what: str) -> None:
        while not self._stop.wait(interval_s):
            try:
                step()
            except Exception:  # keep going; the next pass tries again
                log.exception("alert %s pass failed", what)

    def start(self) -> None:
        if not self.receivers:
            return
        for name, interval, step in (("alert-watch", WATCH_INTERVAL_S, self.check_finished),
                                     ("alert-send", SEND_INTERVAL_S, self.send_due)):
            thread = threading.Thread(target=self._loop, args=(interval, step, name),
                                      name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("critical-result alerts to %s", ", ".join(
            f"{r.name} ({r.kind}: {', '.join(r.triggers)})" for r in self.receivers.values()))

    def stop(self, timeout_s: float = 15.0) -> bool:
        """An alert cut off stays pending (in doubt) and is sent again at the next start."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=max(0.0, timeout_s))
        return not any(thread.is_alive() for thread in self._threads)
