"""Event-driven waiting in pynetdicom's acceptor, for receiving speed (node.dicom.acceptor_choice).

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
- C-STORE only (FastDIMSE): the request's command set is decoded and the
  response's encoded by hand instead of through pydicom Datasets, and data
  fragments are appended without slicing; anything else takes the stock path.
- The supported presentation contexts are copied per association without
  deepcopy (~90 ms of CPU per association for the node's 170 x 16).
- pynetdicom's "standard" per-PDU/per-message log handlers are not bound.
- Not for speed: a C-STORE request whose SOP Class or Instance UID pynetdicom cannot
  take (missing, empty, over 64 characters) goes to the C-STORE handler, which answers
  Cannot understand, where pynetdicom answers nothing (an empty one: the sender waits
  out its DIMSE timeout) or aborts the association (a long one).

Measured with bench/ingest.py (bench/RESULTS.md): the DUL thread's CPU per
instance fell from ~2 ms to ~1 ms; with the node's other changes a 300-slice
series goes in about twice as fast as before.

The loops mirror `DULServiceProvider.run_reactor` and `Association._run_reactor`
of pynetdicom 3.0.4 line for line except for the waiting. This module subclasses
pynetdicom's internals and imports its private modules: only node.dicom.acceptor_choice imports it,
after checking that pynetdicom is the version it was written for (PINNED_VERSION there);
with any other version the node receives through pynetdicom's stock acceptor.
"""

from __future__ import annotations

import functools
import logging
import queue
import select
import socket
import struct
import threading
import time
from io import BytesIO
from copy import copy, deepcopy
from datetime import datetime
from typing import Any, cast

from pydicom.uid import UID
from pynetdicom import _config, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import LOGGER as _ASSOC_LOG
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import LOGGER as _DUL_LOG
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import (
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)
from pynetdicom.utils import make_target

from node.dicom.connections import Guard, GuardedServer, association_request

log = logging.getLogger("trauma_node.scp")

# Longest wait of an idle loop before it looks at its timers and flags again.
IDLE_WAIT_S = 0.01

# pynetdicom's "standard" log handlers format every PDU and DIMSE message for
# its INFO/DEBUG log, which the node silences (node/logs.py): not bound here.
_LOG_HANDLERS = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)


class _WakingQueue(queue.Queue):
    """A queue that sets an event whenever something is put in it."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake.set()


def _ui(tag_element: int, value: Any) -> bytes:
    data = str(value).encode("ascii")
    if len(data) % 2:
        data += b"\x00"
    return struct.pack("<HHI", 0x0000, tag_element, len(data)) + data


def encode_store_rsp(rsp: C_STORE) -> bytes:
    """The command set of a C-STORE-RSP without Offending Element or Error Comment,
    Implicit VR Little Endian, as pynetdicom encodes it (PS3.7 9.3.1.2)."""
    body = b"".join((
        _ui(0x0002, rsp.AffectedSOPClassUID) if rsp.AffectedSOPClassUID else b"",
        struct.pack("<HHIH", 0x0000, 0x0100, 2, 0x8001),  # Command Field: C-STORE-RSP
        struct.pack("<HHIH", 0x0000, 0x0120, 2, rsp.MessageIDBeingRespondedTo),
        struct.pack("<HHIH", 0x0000, 0x0800, 2, 0x0101),  # no data set
        struct.pack("<HHIH", 0x0000, 0x0900, 2, rsp.Status),
        _ui(0x1000, rsp.AffectedSOPInstanceUID) if rsp.AffectedSOPInstanceUID else b"",
    ))
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body


# Elements a C-STORE-RQ command set may hold (PS3.7 9.3.1.1).
_STORE_RQ_ELEMENTS = {0x0000, 0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000, 0x1030, 0x1031}


def decode_store_rq(command: bytes, context_id: int) -> C_STORE | None:
    """A C-STORE-RQ primitive from its command set (Implicit VR Little Endian),
    its DataSet an empty BytesIO; None for anything else or anything unusual."""
    elements: dict[int, bytes] = {}
    pos, end = 0, len(command)
    while pos < end:
        if pos + 8 > end:
            return None
        group, element, length = struct.unpack_from("<HHI", command, pos)
        pos += 8
        if group != 0x0000 or element not in _STORE_RQ_ELEMENTS or pos + length > end:
            return None
        elements[element] = command[pos:pos + length]
        pos += length

    def us(element: int) -> int | None:
        value = elements.get(element)
        return struct.unpack("<H", value)[0] if value is not None and len(value) == 2 else None

    def text(element: int) -> str | None:
        value = elements.get(element)
        return value.rstrip(b"\x00 ").decode("ascii") if value is not None else None

    if us(0x0100) != 0x0001 or us(0x0800) in (None, 0x0101) or us(0x0110) is None:
        return None
    rq = C_STORE()
    rq.MessageID = us(0x0110)
    # The UIDs as sent, even empty, too long or not UIDs at all: pynetdicom's setters
    # would raise (the association is then aborted) or log the raw value; the handler
    # checks them and answers Cannot understand (FastAssociation._serve_request).
    for element, attribute in ((0x0002, "_affected_sop_class_uid"),
                               (0x1000, "_affected_sop_instance_uid")):
        value = text(element)
        setattr(rq, attribute, UID(value) if value is not None else None)
    priority = us(0x0700)
    if priority is not None:
        rq.Priority = priority
    if 0x1030 in elements:
        rq.MoveOriginatorApplicationEntityTitle = text(0x1030)
    if 0x1031 in elements:
        rq.MoveOriginatorMessageID = us(0x1031)
    rq.DataSet = BytesIO()
    rq._context_id = context_id
    return rq


class FastDIMSE(DIMSEServiceProvider):
    """Assembles C-STORE requests and encodes their responses with less work.

    Per received instance pynetdicom decodes the command set into a pydicom
    Dataset, converts it to a primitive element by element, copies each data
    fragment twice (a slice, then into a BytesIO), and builds and encodes a
    pydicom Dataset for the response twice (once to measure its length): most
    of the CPU time of the DUL thread. Here, only for C-STORE:
    - a C-STORE-RQ command set is decoded by hand (decode_store_rq) and its
      data fragments are appended to the request's BytesIO without slicing;
    - a C-STORE-RSP without optional elements, a fixed layout, is encoded by
      hand (encode_store_rsp).
    Any other message, anything unusual, pynetdicom's chunked-dataset mode,
    or a handler bound to EVT_DIMSE_RECV / EVT_DIMSE_SENT: the stock code.
    """

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._command = bytearray()
        # (context id, request) while the request's data set arrives
        self._store: tuple[int, C_STORE] | None = None

    def receive_primitive(self, primitive: P_DATA) -> None:
        for context_id, data in primitive.presentation_data_value_list:
            self._receive_pdv(context_id, data)

    def _stock(self, context_id: int, data: bytes | memoryview) -> None:
        single = P_DATA()
        single.presentation_data_value_list = [[context_id, bytes(data)]]
        super().receive_primitive(single)

    def _receive_pdv(self, context_id: int, data: bytes) -> None:
        control = data[0]  # message control header, PS3.8 E.2
        if self._store is not None:
            store_context, rq = self._store
            if control & 1:  # a command before the data set ended: stock decides
                self._store = None
                self._stock(context_id, data)
                return
            cast(BytesIO, rq.DataSet).write(memoryview(data)[1:])
            if control & 2:
                self._store = None
                # Served here, in the DUL thread, where it can be: no hand-off to the
                # association thread and back (FastAssociation.serve_store_here).
                if not cast("FastAssociation", self.assoc).serve_store_here(rq, store_context):
                    self.msg_queue.put((store_context, rq))
            return
        if self.message is not None or not control & 1:  # stock has a message under way
            self._stock(context_id, data)
            return
        self._command += memoryview(data)[1:]
        if not control & 2:
            return
        command = bytes(self._command)
        self._command.clear()
        rq = None
        if (not _config.STORE_RECV_CHUNKED_DATASET
                and not self.assoc.get_handlers(evt.EVT_DIMSE_RECV)):
            try:
                rq = decode_store_rq(command, context_id)
            except Exception:  # unusual values: the stock decoder reports them
                rq = None
        if rq is None:
            self._stock(context_id, b"\x03" + command)
            return
        self._store = (context_id, rq)

    def send_msg(self, primitive: Any, context_id: int) -> None:
        if (type(primitive) is C_STORE and primitive.MessageIDBeingRespondedTo is not None
                and primitive.Status is not None and primitive.OffendingElement is None
                and primitive.ErrorComment is None
                and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)):
            try:
                command = encode_store_rsp(primitive)
            except (UnicodeError, struct.error, TypeError):  # unusual values: stock
                command = None
            max_pdu = self.maximum_pdu_size
            if command is not None and (not max_pdu or len(command) + 7 <= max_pdu):
                pdata = P_DATA()
                # Message control header 0x03: command, last fragment (PS3.8 E.2).
                pdata.presentation_data_value_list = [[context_id, b"\x03" + command]]
                self.dul.send_pdu(pdata)
                return
        super().send_msg(primitive, context_id)


class FastSocket(AssociationSocket):
    def __init__(self, assoc: Association, client_socket: socket.socket,
                 received: bytes = b"") -> None:
        """received: what was read before the association existed (its A-ASSOCIATE-RQ,
        node.dicom.connections), to be read first."""
        super().__init__(assoc, client_socket=client_socket)
        self._received = bytearray(received)

    @property
    def ready(self) -> bool:
        return bool(self._received) or super().ready

    def recv(self, nr_bytes: int) -> bytearray:
        """Read nr_bytes (fewer only if the peer closed the connection)."""
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        nr_read = min(nr_bytes, len(self._received))
        if nr_read:
            buffer[:nr_read] = self._received[:nr_read]
            del self._received[:nr_read]
        while nr_read < nr_bytes:
            n = sock.recv_into(view[nr_read:], nr_bytes - nr_read)
            if not n:  # connection closed: return what we have, as the stock recv does
                del view
                del buffer[nr_read:]
                return buffer
            nr_read += n
        return buffer


_PDU_EVENTS = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV, evt.EVT_FSM_TRANSITION)


def _presentation_data_values(body: bytearray) -> list[tuple[int, memoryview]] | None:
    """The (context id, message control header + fragment) items of a P-DATA-TF PDU's
    body (PS3.8 9.3.5), as views into it; None when they do not add up (the stock
    decoder then reports it)."""
    values = []
    view = memoryview(body)
    pos, end = 0, len(body)
    while pos < end:
        if pos + 6 > end:
            return None
        length = struct.unpack_from(">L", body, pos)[0]
        if length < 2 or pos + 4 + length > end:
            return None
        values.append((body[pos + 4], view[pos + 5:pos + 4 + length]))
        pos += 4 + length
    return values


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

    def _read_pdu_data(self) -> None:
        """DULServiceProvider._read_pdu_data of pynetdicom 3.0.4, with a P-DATA-TF in the
        data transfer state (Sta6) handed straight to DIMSE: its presentation data values
        are cut from the received PDU by hand and passed on as views, with no PDU object,
        primitive, event queue or state machine step between (DT-2 changes nothing else:
        the state stays Sta6). Five such PDUs carry a 512x512 image; each took two full
        copies and about 0.1 ms of objects and events (bench/ingest.py). Any other PDU or
        state, or a handler bound to the PDU events: the stock path."""
        sock = cast(AssociationSocket, self.socket)
        try:
            header = sock.recv(6)
            pdu_type, _, pdu_length = struct.unpack(">BBL", header)
        except (OSError, TimeoutError, struct.error) as exc:  # READ_PDU_EXC_A, _B
            if not isinstance(exc, struct.error):
                _DUL_LOG.error("Connection closed before the entire PDU was received")
            self.event_queue.put("Evt17")
            return
        if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):  # READ_PDU_EXC_C
            _DUL_LOG.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
            self.event_queue.put("Evt19")
            return
        try:
            body = sock.recv(pdu_length)
        except (OSError, TimeoutError):  # READ_PDU_EXC_D
            _DUL_LOG.error("Connection closed before the entire PDU was received")
            self.event_queue.put("Evt17")
            return
        if len(body) != pdu_length:  # READ_PDU_EXC_E
            _DUL_LOG.error(f"The received PDU is shorter than expected ({len(body) + 6} of "
                           f"{6 + pdu_length} bytes received)")
            self.event_queue.put("Evt17")
            return
        if (pdu_type == 0x04 and self.state_machine.current_state == "Sta6"
                and not any(self.assoc.get_handlers(e) for e in _PDU_EVENTS)):
            values = _presentation_data_values(body)
            if values is not None:
                dimse = cast(FastDIMSE, self.assoc.dimse)
                for context_id, value in values:
                    dimse._receive_pdv(context_id, value)
                return
        try:  # READ_PDU_EXC_F
            pdu, event = self._decode_pdu(header + body)
            self.event_queue.put(event)
        except Exception as exc:
            _DUL_LOG.error("Unable to decode the received PDU data")
            _DUL_LOG.exception(exc)
            self.event_queue.put("Evt19")
            return
        self._recv_pdu.put(pdu)

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
        if cast(FastSocket, self.socket)._received:  # the request, read already
            return
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
        self.dimse = FastDIMSE(self)
        self.dimse.msg_queue = _WakingQueue(self._wake)
        for event, handler in _LOG_HANDLERS:
            self.unbind(event, handler)

    def kill(self) -> None:
        self._wake.set()
        super().kill()

    def abort(self, block: bool = True) -> None:
        """Never blocks in the DUL thread (serve_store_here), which must send the A-ABORT."""
        super().abort(block and threading.current_thread() is not self.dul)

    def serve_store_here(self, msg: C_STORE, context_id: int) -> bool:
        """Serve a complete C-STORE request in the calling (DUL) thread; False: leave it to
        the association thread, as pynetdicom does.

        Per instance, the request would go from the DUL thread to the association thread
        through the DIMSE queue, and its response back through the DUL's queue: two
        thread hand-offs under one GIL, about a fifth of the time an instance takes on one
        association (bench/ingest.py). storescu sends the next request only after the
        response, so nothing waits while the handler runs here; PDUs after the request
        (a release, an abort) are read once it has answered, in order. Only what the
        association thread would serve without aborting: an accepted context, no release
        under way, a storage SOP class (or UIDs the handler answers Cannot understand)."""
        if (self._sent_release or self._kill or context_id not in self._accepted_cx
                or self.acceptor.accepted_common_extended):
            return False
        usable = (_usable_uid(msg.AffectedSOPClassUID)
                  and _usable_uid(msg.AffectedSOPInstanceUID))
        if usable and not _config.UNRESTRICTED_STORAGE_SERVICE and uid_to_service_class(
                str(msg.AffectedSOPClassUID)) is not StorageServiceClass:
            return False
        self._serve_request(msg, context_id)
        return True

    def _serve_request(self, msg: Any, context_id: int) -> None:
        """Association._serve_request, except for a C-STORE request whose SOP Class or
        Instance UID pynetdicom would not take (missing, empty, too long): pynetdicom
        ignores it without an answer (the sender waits out its DIMSE timeout) or aborts
        the association. Such a request goes to the C-STORE handler here, which answers
        it (Cannot understand), and the association goes on."""
        context = self._accepted_cx.get(context_id)
        if (type(msg) is not C_STORE or msg.MessageID is None or context is None
                or self._sent_release or _usable_uid(msg.AffectedSOPClassUID)
                and _usable_uid(msg.AffectedSOPInstanceUID)):
            super()._serve_request(msg, context_id)
            return
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = msg.MessageID
        self._is_paused = True
        try:
            status = evt.trigger(self, evt.EVT_C_STORE,
                                 {"request": msg, "context": context.as_tuple})
        except Exception:
            _ASSOC_LOG.exception("Exception in handler bound to 'evt.EVT_C_STORE'")
            status = 0xC211  # what pynetdicom answers when a handler raises
        finally:
            self._is_paused = False
        if self.is_established:
            rsp = StorageServiceClass(self).validate_status(status, rsp)
            self.dimse.send_msg(rsp, context_id)

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
                # Changed: the flags are set before the response is queued, not
                # after. The DUL thread, now woken at once, sends it and may see
                # the peer close the connection (EVT_CONN_CLOSE) before this
                # thread runs again; handlers then must see "released".
                self.is_released = True
                self.is_established = False
                self.acse.send_release(is_response=True)
                _ASSOC_LOG.info("Association Released")
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


def _usable_uid(value: Any) -> bool:
    """Would pynetdicom's C_STORE take this UID (set it and encode it in a response)?"""
    return bool(value) and _valid_ui(str(value))


@functools.lru_cache(maxsize=1024)
def _valid_ui(value: str) -> bool:
    """pynetdicom's UI check (a regex through pydicom), once per UID: each request's two UIDs
    are asked about twice (serve_store_here, _serve_request), its SOP class every time."""
    return bool(_config.VALIDATORS["UI"](UID(value))[0])


_CONTEXT_FIELDS = {"_context_id", "_abstract_syntax", "_transfer_syntax", "result",
                   "_scu_role", "_scp_role", "_as_scp", "_as_scu"}


def _copy_contexts(contexts: list) -> list:
    """deepcopy(contexts), in a millisecond instead of ~90 ms for the node's 170
    storage contexts x 16 transfer syntaxes (every field but the list of
    transfer syntaxes is immutable)."""
    copies = []
    for cx in contexts:
        if vars(cx).keys() != _CONTEXT_FIELDS:  # not the class we know: the safe way
            return deepcopy(contexts)
        twin = copy(cx)
        twin._transfer_syntax = list(cx._transfer_syntax)
        copies.append(twin)
    return copies


class FastRequestHandler(RequestHandler):
    server: GuardedServer

    def handle(self) -> None:
        """In the connection's own thread: TLS handshake and A-ASSOCIATE-RQ first, within
        a timeout (node.dicom.connections), then the association as RequestHandler.handle."""
        opened = association_request(self.server, self.request, self.client_address)
        if opened is not None:
            self.request, self._request_pdu = opened
            super().handle()

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

        sock = FastSocket(assoc, self.request, self._request_pdu)
        assoc.set_socket(sock)

        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = _copy_contexts(self.server.contexts)

        assoc.requestor.address_info = self.remote

        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    handler = cast(Any, handler)
                    assoc.bind(event, handler[0], handler[1])

        return assoc


def start_server(ae: Any, address: tuple[str, int], evt_handlers: list, guard: Guard,
                 ssl_context: Any = None, listen_socket: socket.socket | None = None
                 ) -> ThreadedAssociationServer:
    """ae.start_server(address, block=False, ...) with the fast acceptor classes, and
    connections accepted as node.dicom.connections says (guard: its timeouts and refusals);
    listen_socket: accept on it, shared with the node's other receiving processes, instead
    of binding address. Only node.dicom.acceptor_choice calls this, once it has checked
    pynetdicom's version."""
    server_class: type[GuardedServer] = GuardedServer
    if listen_socket is not None:
        server_class = type("SharedSocketServer", (GuardedServer,),
                            {"listen_socket": listen_socket})
    server = ae.make_server(address, ssl_context=ssl_context, evt_handlers=evt_handlers,
                            server_class=server_class, request_handler=FastRequestHandler)
    server.guard = guard
    for event, handler in _LOG_HANDLERS:
        server.unbind(event, handler)
    timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")
    thread = threading.Thread(target=make_target(server.serve_forever),
                              name=f"AcceptorServer@{timestamp}", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server


__all__ = ["FastAssociation", "FastDUL", "FastRequestHandler", "FastSocket", "start_server"]
