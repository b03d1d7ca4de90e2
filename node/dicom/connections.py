"""Accepting DICOM connections so that no connection can hold up the others.

pynetdicom 3.0.4 does the TLS handshake in its accept loop, on a socket with no timeout:
one peer that connects and never starts the handshake stops every TLS sender for as long
as it stays connected. And each connection is an association from its first moment,
counted against network.max_associations while it waits (ACSE timeout) for its
A-ASSOCIATE-RQ: a few idle sockets keep every sender out.

Here the accept loop only accepts. The connection's own thread then does the TLS
handshake and reads the whole A-ASSOCIATE-RQ PDU, both within
network.association_request_timeout_s, before any association exists; a connection that
fails either is closed, logged and counted, having held no slot. The request's bytes are
handed to the association (node.dicom.fast_acceptor.FastSocket), which goes on as pynetdicom does.
Once associated, reads time out after network.network_timeout_s, so a peer that stalls in
the middle of a PDU cannot hold its slot (and a thread) for ever either.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from dataclasses import dataclass
from typing import Callable

from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import decode_bytes

A_ASSOCIATE_RQ = 0x01
MAX_REQUEST_BYTES = 1 << 20  # 128 contexts x 16 transfer syntaxes come to ~150 KB
ANSWER_WAIT_S = 1.0  # after an A-ASSOCIATE-RJ, for the peer to close the connection


@dataclass
class Guard:
    request_timeout_s: float  # TLS handshake and A-ASSOCIATE-RQ, from the connection
    data_timeout_s: float | None  # any read once associated
    # (host, metrics code, reason); code None: the peer left, nothing was refused
    on_refused: Callable[[str, str | None, str], None]
    # A socket shared by several receiving processes (node.dicom.receivers): how long this
    # one waits before it accepts (it is busier than another), and that it accepted.
    accept_delay: Callable[[], float] = lambda: 0.0
    on_accepted: Callable[[], None] = lambda: None


class Refused(Exception):
    def __init__(self, code: str | None, reason: str, answer: bytes = b""):
        super().__init__(reason)
        self.code = code
        self.answer = answer  # a PDU sent before the connection is closed


def _associate_rj(reason: int) -> bytes:
    """A-ASSOCIATE-RJ, rejected-permanent by the DICOM UL service-user (PS3.8 9.3.4)."""
    return struct.pack(">BBLBBBB", 0x03, 0, 4, 0, 1, 1, reason)


# A-ASSOCIATE-RQ fields (PS3.8 9.3.2): offset, name, A-ASSOCIATE-RJ reason when invalid
_AE_FIELDS = ((10, "Called AE Title", 7), (26, "Calling AE Title", 3))


def check_ae_titles(request: bytes) -> None:
    """Refuse a request whose AE titles pynetdicom cannot take (empty, control characters,
    a backslash): decoding it would fail in the association's DUL, which then holds its
    slot until the ACSE timeout, unlogged and uncounted. Raises Refused."""
    from pynetdicom import _config  # private: used by the fast acceptor only (node.dicom.acceptor_choice)

    for offset, name, reason in _AE_FIELDS:
        raw = request[offset:offset + 16]
        value = decode_bytes(raw) if len(raw) == 16 else ""
        valid, why = (_config.VALIDATORS["AE"](value) if value.strip()
                      else (False, "empty"))
        if not valid:
            raise Refused("bad_request", f"A-ASSOCIATE-RQ with an invalid {name} "
                                         f"{value.strip()!r}: {why}", _associate_rj(reason))


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server whose accept loop does nothing but accept.

    With listen_socket set (node.dicom.receivers) it accepts on that socket, bound and
    listening already and shared by the node's receiving processes, instead of binding
    its own. Each of them accepts when the socket is readable; the one that loses the
    race for a connection gets nothing (non-blocking accept) and waits for the next, and a
    process busier than another waits a little before it accepts (guard.accept_delay), so
    that the idler one takes the connection: associations spread over the processes."""

    daemon_threads = True  # a connection waiting for its request never delays the exit
    guard: Guard
    listen_socket: socket.socket | None = None

    def server_bind(self) -> None:
        if self.listen_socket is None:
            super().server_bind()
            return
        self.socket.close()
        self.socket = self.listen_socket
        self.socket.settimeout(0)  # the race for a connection is lost without waiting
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self.listen_socket is None:
            super().server_activate()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        if self.listen_socket is not None:
            delay = self.guard.accept_delay()
            if delay > 0:  # let an idler process take it first
                time.sleep(delay)
        sock, address = self.socket.accept()  # no handshake here: see association_request
        self.guard.on_accepted()
        sock.settimeout(None)
        return sock, address


def association_request(server: GuardedServer, sock: socket.socket, address: tuple
                        ) -> tuple[socket.socket, bytes] | None:
    """In the connection's thread: the TLS handshake, then the A-ASSOCIATE-RQ PDU, within
    the request timeout. Returns the (TLS) socket and the PDU's bytes; None when the
    connection was refused (closed, logged and counted through guard.on_refused)."""
    guard = server.guard
    deadline = time.monotonic() + guard.request_timeout_s
    tls = server.ssl_context is not None
    try:
        try:
            if tls:
                sock.settimeout(guard.request_timeout_s)
                sock = server.ssl_context.wrap_socket(sock, server_side=True)
                tls = False  # done: what fails next is the request
            header = _read(sock, 6, deadline)
            pdu_type, _, length = struct.unpack(">BBL", header)
            if pdu_type != A_ASSOCIATE_RQ:
                raise Refused("no_request", f"PDU type 0x{pdu_type:02X} first, not an "
                                            "A-ASSOCIATE-RQ")
            if length > MAX_REQUEST_BYTES:
                raise Refused("no_request", f"an A-ASSOCIATE-RQ of {length} bytes")
            request = header + _read(sock, length, deadline)
            check_ae_titles(request)
        except TimeoutError:
            raise Refused("tls" if tls else "no_request",
                          f"no {'TLS handshake' if tls else 'association request'} within "
                          f"{guard.request_timeout_s:g} s") from None
        except ssl.SSLError as exc:
            raise Refused("tls", f"TLS handshake failed: {exc.reason or exc}") from None
        except OSError as exc:  # reset, or closed: a port check, a peer that gave up
            raise Refused(None, "connection closed before an association request "
                                f"({type(exc).__name__})") from None
    except Refused as refused:
        guard.on_refused(str(address[0]), refused.code, str(refused))
        if refused.answer:
            _answer(sock, refused.answer)
        _close(sock)
        return None
    sock.settimeout(guard.data_timeout_s)
    return sock, request


def _read(sock: socket.socket, size: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < size:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionAbortedError("closed by the peer")
        data += chunk
    return bytes(data)


def _answer(sock: socket.socket, pdu: bytes) -> None:
    """Send pdu, then let the peer close first (PS3.8 ARTIM), for at most ANSWER_WAIT_S:
    a connection closed at once can reach the peer before the PDU is read."""
    try:
        sock.settimeout(ANSWER_WAIT_S)
        sock.sendall(pdu)
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + ANSWER_WAIT_S
        while sock.recv(4096) and time.monotonic() < deadline:
            pass
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
