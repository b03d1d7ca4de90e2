"""Association policy: who may send to the node, and whether it can take more.

Checked when the A-ASSOCIATE-RQ arrives, before anything is accepted. Each
refusal carries the A-ASSOCIATE-RJ result, source and diagnostic of PS3.8
9.3.4 that says why.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass

from node.config import Peer

log = logging.getLogger("trauma_node.policy")

# (result, source, diagnostic) of PS3.8 Table 9-21.
PERMANENT, TRANSIENT = 0x01, 0x02
SERVICE_USER, SERVICE_PROVIDER_PRESENTATION = 0x01, 0x03
CALLING_AE_NOT_RECOGNIZED, CALLED_AE_NOT_RECOGNIZED = 0x03, 0x07
TEMPORARY_CONGESTION, LOCAL_LIMIT_EXCEEDED = 0x01, 0x02


@dataclass(frozen=True)
class Rejection:
    result: int
    source: int
    diagnostic: int
    reason: str  # for the log: says who and what
    code: str  # for the metrics: one of node.metrics.REJECTION_REASONS


@dataclass(frozen=True)
class _AllowedPeer:
    ae_title: str  # "*" for any
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]  # empty for any host


def _resolve(host: str) -> tuple:
    """A host entry as networks: an IP, a CIDR block, '*', or a name resolved now."""
    if host == "*":
        return ()
    try:
        return (ipaddress.ip_network(host, strict=False),)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise ValueError(f"peer host {host!r} cannot be resolved: {exc}") from exc
    return tuple({ipaddress.ip_network(info[4][0]) for info in infos})


class AssociationPolicy:
    def __init__(self, ae_title: str, peers: list[Peer], free_bytes, min_free_bytes: int):
        """free_bytes: a callable giving the spool's free space now."""
        self.ae_title = ae_title.strip()
        self.peers = [_AllowedPeer(p.ae_title.strip(), _resolve(p.host.strip())) for p in peers]
        self.free_bytes = free_bytes
        self.min_free_bytes = min_free_bytes

    def disk_low(self) -> bool:
        return self.free_bytes() < self.min_free_bytes

    def check(self, called_ae: str, calling_ae: str, host: str) -> Rejection | None:
        called_ae, calling_ae = called_ae.strip(), calling_ae.strip()
        if called_ae != self.ae_title:
            return Rejection(PERMANENT, SERVICE_USER, CALLED_AE_NOT_RECOGNIZED,
                             f"called AE title {called_ae!r} is not ours ({self.ae_title!r})",
                             "called_ae")
        if self.peers and not self._allowed(calling_ae, host):
            return Rejection(PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNIZED,
                             f"calling AE {calling_ae!r} from {host} is not an allowed peer",
                             "calling_ae")
        if self.disk_low():
            return Rejection(TRANSIENT, SERVICE_PROVIDER_PRESENTATION, TEMPORARY_CONGESTION,
                             f"free disk below the floor of {self.min_free_bytes // 2**20} MB",
                             "disk_low")
        return None

    def _allowed(self, calling_ae: str, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        for peer in self.peers:
            if peer.ae_title not in ("*", calling_ae):
                continue
            if not peer.networks or any(address in net for net in peer.networks):
                return True
        return False
