"""Event-driven waiting in pynetdicom's acceptor, for receiving speed.

Why this module exists (profile of `trauma-node serve` receiving a 300-slice
512x512 series from DCMTK storescu, bench/ingest.py, see bench/RESULTS.md):
pynetdicom 3.0.4 runs two polling loops per association. The DUL thread
(`DULServiceProvider.run_reactor`) checks its outgoing queue and the socket and
sleeps `_run_loop_delay` (1 ms) whenever neither had anything; the association
thread (`Association._run_reactor`) sleeps 1 ms between looks at the DIMSE
message queue. storescu sends the next C-STORE only after the response to the
previous one, so every instance waits twice for a sleep to end: the complete
request sits in the DIMSE queue until the association thread wakes, and the
response sits in the DUL's queue until the DUL thread wakes (about 1 ms per
instance together, a fifth of the budget at 200 images/s). With several
associations, a thousand wake-ups a second per thread also compete for the GIL
with the threads doing the work. And `AssociationSocket.recv` reads a PDU in
4096-byte pieces, growing a bytearray (32 calls for one 128 KiB P-DATA-TF).

What it changes, nothing else:
- The DUL thread waits in select() on its socket and on a wake-up socket pair
  that is written when the association queues a PDU to send or kills the DUL,
  instead of sleeping. Timers (ARTIM) are still checked at least every
  `IDLE_WAIT_S`.
- The association thread waits on a threading.Event set when a DIMSE message or
  an ACSE primitive (release, abort) is queued for it, or when it is killed,
  instead of sleeping; it still looks at everything at least every
  `IDLE_WAIT_S`, as the stock loop does every millisecond.
- The socket reads a PDU with recv_into() into a buffer of its full length.
- TCP_NODELAY on accepted sockets (responses are small; never wait for Nagle).

The loops mirror `DULServiceProvider.run_reactor` and `Association._run_reactor`
of pynetdicom 3.0.4 line for line except for the waiting. With any other
pynetdicom version `start_server` falls back to the stock server (and logs it),
so an upgrade can never break receiving, only slow it down.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import threading
import time
from copy import deepcopy
from datetime import datetime
from typing import Any, cast

import pynetdicom
from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import LOGGER as _ASSOC_LOG
from pynetdicom.association import Association
from pynetdicom.dul import LOGGER as _DUL_LOG
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import (
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)
from pynetdicom.utils import make_target

log = logging.getLogger("trauma_node.scp")

PINNED_VERSION = "3.0.4"
COMPATIBLE = pynetdicom.__version__ == PINNED_VERSION

# Longest wait of an idle loop before it looks at its timers and flags again.
IDLE_WAIT_S = 0.01


class _WakingQueue(queue.Queue):
    """A queue that sets an event whenever something is put in it."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake.set()


class FastSocket(AssociationSocket):
    def recv(self, nr_bytes: int) -> bytearray:
        """Read nr_bytes (fewer only if the peer closed the connection)."""
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        nr_read = 0
        while nr_read < nr_bytes:
            n = sock.recv_into(view[nr_read:], nr_bytes - nr_read)
            if not n:  # connection closed: return what we have, as the stock recv does
                del view
                del buffer[nr_read:]
                return buffer
            nr_read += n
        return buffer


class FastDUL(DULServiceProvider):
    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # Primitives the association waits for (release, abort) wake it up.
        self.to_user_queue = _WakingQueue(cast("FastAssociation", assoc)._wake)

    def _wakeup(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # buffer full (already woken) or closed at the end
            pass

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self._wakeup()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wakeup()

    def stop_dul(self) -> bool:
        """DULServiceProvider.stop_dul, waking the reactor instead of letting it sleep on."""
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self._wakeup()
            while self.is_alive():
                time.sleep(self._run_loop_delay)
            return True
        return False

    def _wait(self, timeout: float) -> None:
        """Sleep until the socket is readable, we are woken, or timeout passes."""
        sock = self.socket.socket if self.socket is not None else None
        try:
            ready, _, _ = select.select(
                [self._wake_r] if sock is None else [self._wake_r, sock], [], [], timeout)
        except (OSError, ValueError):  # socket closed meanwhile: the loop sees it
            time.sleep(self._run_loop_delay)
            return
        if self._wake_r in ready:
            try:
                while self._wake_r.recv(4096):
                    pass
            except OSError:
                pass

    def run_reactor(self) -> None:
        """DULServiceProvider.run_reactor of pynetdicom 3.0.4, waiting instead of sleeping."""
        try:
            self._reactor()
        finally:
            self._wake_r.close()
            self._wake_w.close()

    def _reactor(self) -> None:
        self._idle_timer.start()
        self.socket = cast(AssociationSocket, self.socket)
        sleep = False

        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True

            if sleep:
                # Changed: wait for data, a PDU to send or a kill, not a fixed 1 ms.
                self._wait(IDLE_WAIT_S)

            if self._kill_thread:
                break

            if self.artim_timer.expired:
                self.event_queue.put("Evt18")

            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                _DUL_LOG.error("Exception in DUL.run(), aborting association")
                _DUL_LOG.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return

            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue

            self.state_machine.do_action(event)
            sleep = False


class FastAssociation(Association):
    def __init__(self, ae: Any, mode: str) -> None:
        self._wake = threading.Event()
        super().__init__(ae, mode)
        self.dul = FastDUL(self)
        # The timeouts were applied to the DUL made by Association.__init__.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout
        self.dimse.msg_queue = _WakingQueue(self._wake)

    def kill(self) -> None:
        self._wake.set()
        super().kill()

    def _run_reactor(self) -> None:
        """Association._run_reactor of pynetdicom 3.0.4, waiting instead of sleeping."""
        self._is_paused = False
        while not self._kill:
            # Changed: wait until something is queued for us, not a fixed 1 ms.
            self._wake.wait(IDLE_WAIT_S)
            self._wake.clear()

            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))
                # More may have arrived while serving: look again at once.
                self._wake.set()

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                _ASSOC_LOG.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                _ASSOC_LOG.info(log_msg)
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                _ASSOC_LOG.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()

                self.kill()
                return


class FastRequestHandler(RequestHandler):
    def _create_association(self) -> Association:
        """RequestHandler._create_association of 3.0.4 with the fast classes."""
        try:
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        assoc = FastAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server

        timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")
        assoc.name = f"AcceptorThread@{timestamp}"

        sock = FastSocket(assoc, client_socket=self.request)
        assoc.set_socket(sock)

        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)

        assoc.requestor.address_info = self.remote

        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    handler = cast(Any, handler)
                    assoc.bind(event, handler[0], handler[1])

        return assoc


def start_server(ae: Any, address: tuple[str, int], evt_handlers: list,
                 ssl_context: Any = None) -> ThreadedAssociationServer:
    """ae.start_server(address, block=False, ...) with the fast acceptor classes."""
    if not COMPATIBLE:
        log.warning("pynetdicom %s is not %s: using its stock (slower) acceptor",
                    pynetdicom.__version__, PINNED_VERSION)
        return ae.start_server(address, block=False, evt_handlers=evt_handlers,
                               ssl_context=ssl_context)
    server = ae.make_server(address, ssl_context=ssl_context, evt_handlers=evt_handlers,
                            server_class=ThreadedAssociationServer,
                            request_handler=FastRequestHandler)
    timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")
    thread = threading.Thread(target=make_target(server.serve_forever),
                              name=f"AcceptorServer@{timestamp}", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server


__all__ = ["COMPATIBLE", "FastAssociation", "FastDUL", "FastRequestHandler", "FastSocket",
           "start_server"]
