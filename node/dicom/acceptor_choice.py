"""Which acceptor receives: the node's fast one, or pynetdicom's stock one.

The fast acceptor (node.dicom.fast_acceptor, node.dicom.connections' GuardedServer) subclasses
pynetdicom's internals (its DUL and association loops, the request handler) and imports
its private modules, line for line as they are in pynetdicom 3.0.4. A later pynetdicom may
change any of that. So this module, the only way in, checks pynetdicom's version first,
and imports node.dicom.fast_acceptor only when it is the one the code was written for. With any
other version, or when that import fails, the node receives through pynetdicom's stock
`AE.start_server` (public API only) and logs one line saying so: an upgrade can make
receiving slower, never break it.

What the stock acceptor loses (README, "Receiving with another pynetdicom"):
- speed: 1 ms polling in two threads per association, pydicom Datasets per C-STORE
  command (about half the images per second on one association);
- a C-STORE request with an empty or overlong SOP Class or Instance UID is not answered
  Cannot understand (0xC000): pynetdicom answers nothing (the sender waits out its DIMSE
  timeout) or aborts the association;
- node.dicom.connections: the TLS handshake runs in pynetdicom's accept loop, without a
  timeout, and a connection is an association (holding one of
  network.max_associations) from its first moment, not only once its A-ASSOCIATE-RQ
  has arrived within network.association_request_timeout_s; an A-ASSOCIATE-RQ with an AE
  title that cannot be one is not refused and counted (bad_request);
- a released association is flagged released only after its A-RELEASE-RP is queued, so
  a peer that closes at once can, rarely, make it look cut short (its series then marked
  possibly incomplete).

STOCK_ENV forces the stock acceptor with pynetdicom 3.0.4 too: for the tests that run the
receive suite through it (tests/test_stock_acceptor.py), not a setting for sites.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

import pynetdicom
from pynetdicom import evt

log = logging.getLogger("trauma_node.scp")

PINNED_VERSION = "3.0.4"
COMPATIBLE = pynetdicom.__version__ == PINNED_VERSION
STOCK_ENV = "TRAUMA_NODE_TEST_STOCK_ACCEPTOR"

# pynetdicom's per-PDU/per-message log handlers, which the node silences (node/logs.py):
# unbound from the stock server by the module that defines them, not by import.
_LOG_EVENTS = (evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT, evt.EVT_PDU_RECV, evt.EVT_PDU_SENT)
_STANDARD_HANDLERS_MODULE = "pynetdicom._handlers"


def fast_acceptor() -> Any | None:
    """node.dicom.fast_acceptor when it may be used here, else None (and why, logged)."""
    if os.environ.get(STOCK_ENV):
        log.warning("%s is set: receiving through pynetdicom's stock acceptor", STOCK_ENV)
        return None
    if not COMPATIBLE:
        log.warning("pynetdicom %s is not %s: receiving through its stock acceptor (slower; "
                    "TLS handshakes in its accept loop; idle connections counted as "
                    "associations; no answer to a C-STORE without a usable UID)",
                    pynetdicom.__version__, PINNED_VERSION)
        return None
    try:
        module = importlib.import_module(f"{__package__}.fast_acceptor")
    except Exception as exc:  # noqa: BLE001 - anything an odd install raises: stock
        log.warning("the fast acceptor cannot be loaded (%s: %s): receiving through "
                    "pynetdicom's stock acceptor", type(exc).__name__, exc)
        return None
    return module


def start_server(ae: Any, address: tuple[str, int], evt_handlers: list, guard: Any,
                 ssl_context: Any = None, listen_socket: Any = None) -> Any:
    """ae.start_server(address, block=False, ...): the fast acceptor when pynetdicom is
    PINNED_VERSION, with connections accepted as node.dicom.connections says (guard: its
    timeouts and refusals); else pynetdicom's stock server. listen_socket (a socket shared
    by several receiving processes, node.dicom.receivers) needs the fast acceptor."""
    module = fast_acceptor()
    if module is not None:
        return module.start_server(ae, address, evt_handlers, guard, ssl_context=ssl_context,
                                   listen_socket=listen_socket)
    if listen_socket is not None:
        raise RuntimeError("a shared listening socket needs the fast acceptor")
    server = ae.start_server(address, block=False, evt_handlers=evt_handlers,
                             ssl_context=ssl_context)
    _unbind_standard_log_handlers(server)
    return server


def _unbind_standard_log_handlers(server: Any) -> None:
    """Best effort, through the server's public get_handlers/unbind: logging only."""
    try:
        for event in _LOG_EVENTS:
            for handler in list(server.get_handlers(event)):
                func = handler[0] if isinstance(handler, tuple) else handler
                if getattr(func, "__module__", "") == _STANDARD_HANDLERS_MODULE:
                    server.unbind(event, func)
    except Exception:  # noqa: BLE001 - a changed API costs log volume, not receiving
        log.debug("pynetdicom's standard log handlers left bound", exc_info=True)


__all__ = ["COMPATIBLE", "PINNED_VERSION", "STOCK_ENV", "fast_acceptor", "start_server"]
