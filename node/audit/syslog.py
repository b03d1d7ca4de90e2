"""Audit messages to a syslog collector, never in the way of the caller.

RFC 5424 messages (facility 10, security/authorization, severity 5, notice: PRI 85;
MSGID "IHE+RFC-3881" as IHE ITI TF-2 asks; the XML after a UTF-8 BOM), sent by a thread
of their own from a bounded queue:
- tls://host:port (default 6514): RFC 5425, TLS with octet counting ("LEN SP MSG");
- tcp://host:port (default 601): RFC 6587 octet counting on plain TCP;
- udp://host:port (default 514): RFC 5426, one message per datagram.
`submit` only queues. A collector that is down or slow fills the queue up to its bound;
then the oldest message is dropped and counted (trauma_node_audit_messages_total{outcome=
"dropped"}); the local audit file (node.audit.trail) has every message regardless.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

log = logging.getLogger("trauma_node.audit")

PRI = 10 * 8 + 5  # facility authpriv (10), severity notice (5)
MSGID = "IHE+RFC-3881"
BOM = "\ufeff"
DEFAULT_PORTS = {"tls": 6514, "tcp": 601, "udp": 514}
CONNECT_TIMEOUT_S = 5.0
RETRY_MAX_S = 30.0


@dataclass(frozen=True)
class Collector:
    scheme: str  # tls | tcp | udp
    host: str
    port: int


def parse_collector(url: str) -> Collector:
    """tls://host:6514, tcp://host:601, udp://host:514; raises ValueError saying why."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"{url!r}: the scheme must be tls://, tcp:// or udp://")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a TCP/UDP port") from None
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise ValueError(f"{url!r}: only scheme://host:port")
    return Collector(scheme, parts.hostname, port)


def frame(xml: str, hostname: str, app_name: str = "trauma-node",
          when: dt.datetime | None = None) -> bytes:
    """One RFC 5424 message (without transport framing)."""
    when = when or dt.datetime.now(dt.timezone.utc)
    stamp = when.isoformat(timespec="microseconds").replace("+00:00", "Z")
    header = f"<{PRI}>1 {stamp} {_field(hostname)} {_field(app_name)} {os.getpid()} {MSGID} -"
    return (header + " " + BOM + xml).encode("utf-8")


def _field(value: str) -> str:
    """A header field: printable US-ASCII without spaces, at most 48 characters."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:48]
    return cleaned or "-"


class SyslogSender:
    """A thread sending queued messages to one collector, reconnecting with backoff."""

    def __init__(self, collector: Collector, ssl_context: ssl.SSLContext | None,
                 max_queued: int, on_outcome: Callable[[str], None], hostname: str):
        self.collector = collector
        self.ssl_context = ssl_context
        self.max_queued = max_queued
        self.on_outcome = on_outcome  # "sent" | "dropped"
        self.hostname = hostname
        self._queue: collections.deque[bytes] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._failing_since: float | None = None

    def start(self) -> None:
        self._thread.start()

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def submit(self, xml: str) -> None:
        """Queue one message; never blocks, never raises."""
        message = frame(xml, self.hostname)
        dropped = False
        with self._cond:
            if len(self._queue) >= self.max_queued:
                self._queue.popleft()
                dropped = True
            self._queue.append(message)
            self._cond.notify()
        if dropped:
            self.on_outcome("dropped")

    def stop(self, timeout_s: float) -> None:
        """Send what is queued within timeout_s, then stop (what is left stays unsent: it
        is in the local file)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue and self._thread.is_alive() and time.monotonic() < deadline:
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
        self._close()

    def _run(self) -> None:
        delay = 1.0
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                message = self._queue[0]
            try:
                self._send(message)
            except OSError as exc:
                self._close()
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("audit: syslog collector %s://%s:%d unreachable (%s); messages "
                                "are queued (at most %d) and always written to the audit file",
                                self.collector.scheme, self.collector.host, self.collector.port,
                                exc, self.max_queued)
                with self._cond:
                    if not self._stopping:
                        self._cond.wait(delay)
                delay = min(RETRY_MAX_S, delay * 2)
                continue
            delay = 1.0
            if self._failing_since is not None:
                log.info("audit: syslog collector %s:%d reachable again", self.collector.host,
                         self.collector.port)
                self._failing_since = None
            with self._cond:
                if self._queue and self._queue[0] is message:
                    self._queue.popleft()
                self._cond.notify_all()
            self.on_outcome("sent")

    def _send(self, message: bytes) -> None:
        c = self.collector
        if c.scheme == "udp":
            if self._sock is None:
                family = socket.getaddrinfo(c.host, c.port, type=socket.SOCK_DGRAM)[0][0]
                self._sock = socket.socket(family, socket.SOCK_DGRAM)
            self._sock.sendto(message, (c.host, c.port))
            return
        if self._sock is None:
            sock = socket.create_connection((c.host, c.port), timeout=CONNECT_TIMEOUT_S)
            if c.scheme == "tls":
                assert self.ssl_context is not None
                try:
                    sock = self.ssl_context.wrap_socket(sock, server_hostname=c.host)
                except (OSError, ssl.SSLError):
                    sock.close()
                    raise
            self._sock = sock
        self._sock.sendall(str(len(message)).encode("ascii") + b" " + message)

    def _close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
