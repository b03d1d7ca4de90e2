"""The node's settings: one typed object read from config/node.toml.

Precedence, lowest first: built-in defaults, the TOML file, environment
variables (TRAUMA_NODE_<KEY> for the [node] section, TRAUMA_NODE_<SECTION>_<KEY>
for the others, e.g. TRAUMA_NODE_STORAGE_FSYNC=true; lists of tables such as
TRAUMA_NODE_PEERS take JSON), then command-line options. Everything is validated
before the node starts; each problem names its key.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping
from urllib.parse import urlsplit

from pipeline.settings import PipelineSettings

from node.settings_loader import ConfigError, apply_env, build, coerce, env_name, read_toml

ENV_PREFIX = "TRAUMA_NODE"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "node.toml"

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"


@dataclass
class NodeSection:
    ae_title: str = "TRAUMA_AI"
    dicom_bind: str = "0.0.0.0"
    dicom_port: int = 11112
    http_bind: str = "127.0.0.1"
    http_port: int = 8080
    data_dir: str = "./data"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # SIGTERM or SIGINT: `serve` and `worker` have ended within this many seconds.
    stop_timeout_s: float = 10.0
    # This node among those sharing a database: its receiving processes and workers are
    # named after it (node_identity). Empty: host:dicom_port.
    name: str = ""


@dataclass
class NetworkSection:
    max_associations: int = 16
    # A connection must finish its TLS handshake and send its A-ASSOCIATE-RQ within this
    # long, or it is closed; until then it holds no association slot.
    association_request_timeout_s: float = 5.0
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 120.0
    # 0 = no limit: peers send the largest PDUs they can, which is fastest.
    max_pdu_bytes: int = 0
    # Processes receiving on the DICOM port (node.dicom.receivers): one core each.
    # 0 = one per CPU core, at most 4.
    receivers: int = 0


@dataclass
class StorageSection:
    # false: survives a crash of the process (write, then atomic rename).
    # true: also survives power loss (fsync of file, directory and database).
    fsync: bool = False
    min_free_disk_mb: int = 2048
    # Empty: SQLite in the data directory.
    database_url: str = ""
    # Studies are removed this many days after their last image, once nothing of
    # them is in flight (node.store.retention); 0 keeps everything.
    retention_days: float = 7.0
    retention_check_interval_s: float = 3600.0
    # Below this much free disk (MB) the oldest studies go early (0: never).
    purge_below_free_mb: int = 4096


@dataclass
class CompletionSection:
    quiet_period_s: float = 5.0
    trust_image_count: bool = True
    check_interval_s: float = 0.1
    # A complete series waits while another series of its study is still arriving (the
    # study's other phases), at most this long after its last image; 0: never waits.
    study_wait_s: float = 30.0
    # Results of a series version whose receiving was cut short (aborted association, node
    # stopped) wait this long before delivery, and are withdrawn if a later version of the
    # series arrives meanwhile; 0: sent at once (still marked as possibly incomplete).
    incomplete_hold_s: float = 300.0
    # A receiving process (of this node or another sharing the database) silent this long
    # is taken for dead: its associations no longer hold their series open, and those
    # series are marked possibly incomplete (node.store.senders).
    receiver_stale_after_s: float = 30.0


@dataclass
class SelectionSection:
    sop_classes: list[str] = field(
        default_factory=lambda: [CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE,
                                 LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE])
    modalities: list[str] = field(default_factory=lambda: ["CT"])
    min_slices: int = 40
    require_axial: bool = True
    axial_tolerance_deg: float = 10.0
    max_slice_spacing_mm: float = 5.0
    spacing_tolerance_mm: float = 0.05
    exclude_image_types: list[str] = field(default_factory=lambda: ["LOCALIZER"])
    exclude_kernels: list[str] = field(default_factory=lambda: ["BONE", "LUNG"])
    exclude_series_descriptions: list[str] = field(default_factory=lambda: ["(?i)scout|topogram|dose"])
    # What one series may cost the worker; beyond either, it is skipped before decoding:
    # rows x columns x slices (512 x 512 x 2048), and its decoded pixel data (1 GiB).
    max_voxels: int = 512 * 512 * 2048
    max_decoded_bytes: int = 2**30


@dataclass
class WorkersSection:
    count: int = 1
    # How often an idle worker looks for a job, and for instances to decode ahead.
    poll_interval_s: float = 0.1
    # Decode a series' instances while it arrives (node.work.prefetch), in at most
    # prefetch_memory_mb per worker process.
    prefetch: bool = True
    prefetch_memory_mb: int = 1024
    # A worker process keeps its memory between jobs and touches this much at start, so
    # that no series waits for memory handed back to the OS (node.work.memory). 0: off.
    held_memory_mb: int = 768
    max_attempts: int = 3
    # A running job whose worker has not beaten for this long is taken back.
    stale_after_s: float = 120.0


@dataclass
class DeliverySection:
    # Exponential backoff between attempts: base, 2 x base, 4 x base ... up to the cap.
    base_delay_s: float = 2.0
    max_delay_s: float = 300.0
    # After this many failed attempts an object is a dead letter (trauma-node retry).
    max_attempts: int = 12
    check_interval_s: float = 0.1
    timeout_s: float = 30.0
    # Our AE title when we call the destinations.
    calling_ae_title: str = "TRAUMA_AI"


@dataclass
class ApiSection:
    # Bearer tokens accepted by the HTTP API (all endpoints but /healthz).
    # Empty: `serve` generates one at first start and stores it in the data directory.
    tokens: list[str] = field(default_factory=list)
    # Questions and answers older than this are purged.
    conversation_retention_days: int = 30
    # A request body larger than this is refused (413) unread; a question is small.
    max_request_bytes: int = 65536


@dataclass
class TLSSection:
    enabled: bool = False
    certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    require_peer_certificate: bool = True


@dataclass
class AuditSection:
    # The audit trail (DICOM PS3.15 A.5 messages, as IHE ATNA uses): one XML message a line
    # in the file, always; and to a syslog collector when syslog is set.
    enabled: bool = True
    # Empty: DATA_DIR/audit/audit.log.
    file: str = ""
    # Beyond this size the file is renamed to audit.log.<UTC time> (never deleted).
    max_file_mb: int = 64
    # "tls://host:6514" (RFC 5425), "tcp://host:601", "udp://host:514" (RFC 5426); empty: none.
    syslog: str = ""
    # Messages held while the collector is down; beyond, the oldest are dropped (counted).
    syslog_queue: int = 10000
    # Patient ID and name in the messages (Patient participant object); off by default.
    include_patient: bool = False
    # AuditEnterpriseSiteID; empty: left out.
    site_id: str = ""
    # TLS to the collector; empty: the [tls] files.
    ca_certificates: str = ""
    certificate: str = ""
    private_key: str = ""


@dataclass
class PriorSection:
    """The patient's prior study (node.prior): looked up in the PACS when a new study
    arrives, retrieved to this node, analysed, and compared with (pipeline.interval)."""
    enabled: bool = False
    # The PACS queried (C-FIND, Study Root, STUDY level) and asked to C-MOVE the prior.
    ae_title: str = ""
    host: str = ""
    port: int = 104
    # Our AE title as the caller and as the C-MOVE destination; empty: node.ae_title.
    calling_ae_title: str = ""
    lookback_days: int = 365
    modality: str = "CT"
    timeout_s: float = 30.0
    # How long a job waits for its prior's Findings before it reports without them.
    wait_s: float = 120.0
    poll_interval_s: float = 0.5


@dataclass
class VerdictsSection:
    """The readers' verdicts stored to the archive (node.verdicts.archive): a study whose
    verdicts changed gets a new verdict SR, sent to the destinations that take "verdict"
    objects once no verdict came for send_after_s (a reader judging several findings makes
    one SR, not one per click)."""
    # Seconds without a new verdict on the study before its verdict SR is made and queued;
    # 0: never sent (the SR can still be downloaded).
    send_after_s: float = 60.0
    # How often the studies whose verdicts changed are looked for.
    check_interval_s: float = 1.0


@dataclass
class Peer:
    ae_title: str
    host: str


# The kinds of result object a destination may want (dicom_out.KINDS): seg, sr, and for
# viewers without SEG/SR support sc (summary images), pdf (the report), kos (key images).
OBJECT_KINDS = ("seg", "sr", "sc", "pdf", "kos")
# Kinds made per study rather than per series version (dicom_out.outputs.STUDY_KINDS):
# "verdict", the readers' verdicts on the AI results as an SR ([verdicts], node.verdicts).
STUDY_KINDS = ("verdict",)
DESTINATION_KINDS = OBJECT_KINDS + STUDY_KINDS
# How an object whose sending was cut off is settled, by the destination's protocol: asked
# for first (DIMSE: C-FIND; DICOMweb: QIDO-RS "query"), or sent again unasked.
VERIFY_INTERRUPTED = {"dimse": ("c-find", "resend"), "dicomweb": ("query", "resend")}
DICOMWEB_AUTH = ("", "basic", "bearer")


@dataclass
class Destination:
    name: str
    # DIMSE (C-STORE): ae_title, host and port. DICOMweb (STOW-RS): url instead.
    ae_title: str = ""
    host: str = ""
    port: int = 0
    url: str = ""
    tls: bool = False
    # Default: the SEG and SR, and the readers' verdict SR that assesses them.
    objects: list[str] = field(default_factory=lambda: ["seg", "sr", "verdict"])
    # An object whose sending was cut off (crash, stop, no answer) may be there already:
    # "c-find" (DIMSE) or "query" (DICOMweb, QIDO-RS) asks the destination first and sends
    # it only if missing; "resend" sends it again unasked (so does a destination that does
    # not answer the query). Empty: the query of the destination's protocol.
    verify_interrupted: str = ""
    # DICOMweb only. auth: "basic" (username and the password) or "bearer" (the token); the
    # password or token is read from secret_file or from the environment variable
    # secret_env, never from this file.
    auth: str = ""
    username: str = ""
    secret_file: str = ""
    secret_env: str = ""
    # PEM CA bundle that signs the server's certificate; empty: the usual public CAs.
    ca_certificates: str = ""
    # http:// is refused unless this is true (a loopback PACS in tests, say).
    allow_insecure_http: bool = False

    @property
    def protocol(self) -> str:
        return "dicomweb" if self.url else "dimse"

    @property
    def address(self) -> str:
        """Where it is, for logs: its URL, or AE title, host and port."""
        return self.url or f"{self.ae_title}@{self.host}:{self.port}"

    @property
    def verify(self) -> str:
        """verify_interrupted, its default resolved: "c-find", "query" or "resend"."""
        return self.verify_interrupted or VERIFY_INTERRUPTED[self.protocol][0]


# What calls for a critical-result alert (node.alerts.triggers), and how one is sent.
ALERT_TRIGGERS = ("high_risk", "active_extravasation")
ALERT_KINDS = ("webhook", "fhir", "hl7")


@dataclass
class AlertReceiver:
    """One receiver of critical-result alerts ([[alerts]], node.alerts)."""
    name: str
    kind: str  # webhook (JSON, HMAC-signed) | fhir (R4 transaction Bundle) | hl7 (ORU^R01, MLLP)
    # webhook and fhir: url; hl7: host and port.
    url: str = ""
    host: str = ""
    port: int = 0
    triggers: list[str] = field(default_factory=lambda: list(ALERT_TRIGGERS))
    # webhook: the HMAC key (required); fhir: a bearer token (optional). Never in this file.
    secret_file: str = ""
    secret_env: str = ""
    ca_certificates: str = ""
    allow_insecure_http: bool = False
    timeout_s: float = 10.0
    # hl7: MSH-5 and MSH-6, the receiving application and facility.
    receiving_application: str = ""
    receiving_facility: str = ""


@dataclass
class Settings:
    node: NodeSection = field(default_factory=NodeSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    storage: StorageSection = field(default_factory=StorageSection)
    completion: CompletionSection = field(default_factory=CompletionSection)
    selection: SelectionSection = field(default_factory=SelectionSection)
    workers: WorkersSection = field(default_factory=WorkersSection)
    delivery: DeliverySection = field(default_factory=DeliverySection)
    api: ApiSection = field(default_factory=ApiSection)
    tls: TLSSection = field(default_factory=TLSSection)
    audit: AuditSection = field(default_factory=AuditSection)
    prior: PriorSection = field(default_factory=PriorSection)
    verdicts: VerdictsSection = field(default_factory=VerdictsSection)
    peers: list[Peer] = field(default_factory=list)
    destinations: list[Destination] = field(default_factory=list)
    alerts: list[AlertReceiver] = field(default_factory=list)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)

    @property
    def data_dir(self) -> Path:
        return Path(self.node.data_dir).expanduser().resolve()

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def database_url(self) -> str:
        return self.storage.database_url or f"sqlite:///{self.data_dir / 'index.sqlite'}"


_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII, no backslash


def _check_ae_title(value: str, key: str) -> list[str]:
    if not _AE_TITLE.match(value) or not value.strip():
        return [f"{key}: {value!r} is not a valid AE title (1-16 printable ASCII "
                "characters, no backslash, not all spaces)"]
    return []


def _check_port(value: int, key: str) -> list[str]:
    return [] if 1 <= value <= 65535 else [f"{key}: {value} is not a TCP port (1-65535)"]


def _check_positive(value: float, key: str) -> list[str]:
    return [] if value > 0 else [f"{key}: must be greater than 0, got {value}"]


def validate(settings: Settings) -> list[str]:
    """Cross-field and range checks that types alone don't catch."""
    s = settings
    problems: list[str] = []
    problems += _check_ae_title(s.node.ae_title, "node.ae_title")
    problems += _check_port(s.node.dicom_port, "node.dicom_port")
    problems += _check_port(s.node.http_port, "node.http_port")
    for key, value in (("node.dicom_bind", s.node.dicom_bind), ("node.http_bind", s.node.http_bind)):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            problems.append(f"{key}: {value!r} is not an IP address to bind to")
    if not s.node.data_dir.strip():
        problems.append("node.data_dir: must not be empty")
    if s.node.stop_timeout_s < 2:
        problems.append(f"node.stop_timeout_s: at least 2 seconds, got {s.node.stop_timeout_s}")
    problems += _check_positive(s.network.max_associations, "network.max_associations")
    for name in ("association_request_timeout_s", "acse_timeout_s", "dimse_timeout_s",
                 "network_timeout_s"):
        problems += _check_positive(getattr(s.network, name), f"network.{name}")
    if not 0 <= s.network.receivers <= 64:
        problems.append("network.receivers: 0 (one per CPU core) to 64")
    if s.network.max_pdu_bytes != 0 and s.network.max_pdu_bytes < 4096:
        problems.append("network.max_pdu_bytes: 0 (no limit) or at least 4096")
    if s.storage.min_free_disk_mb < 0:
        problems.append("storage.min_free_disk_mb: must not be negative")
    if not 0 < s.completion.quiet_period_s <= 3600:
        problems.append("completion.quiet_period_s: must be in (0, 3600] seconds")
    problems += _check_positive(s.completion.check_interval_s, "completion.check_interval_s")
    problems += _check_positive(s.completion.receiver_stale_after_s,
                                "completion.receiver_stale_after_s")
    if len(s.node.name) > 60 or "/" in s.node.name:
        problems.append("node.name: at most 60 characters, no '/'")
    if not 0 <= s.completion.study_wait_s <= 3600:
        problems.append("completion.study_wait_s: must be in [0, 3600] seconds")
    if not 0 <= s.completion.incomplete_hold_s <= 86400:
        problems.append("completion.incomplete_hold_s: must be in [0, 86400] seconds")
    if s.selection.min_slices < 1:
        problems.append("selection.min_slices: must be at least 1")
    problems += _check_positive(s.selection.max_slice_spacing_mm, "selection.max_slice_spacing_mm")
    problems += _check_positive(s.selection.max_voxels, "selection.max_voxels")
    problems += _check_positive(s.selection.max_decoded_bytes, "selection.max_decoded_bytes")
    for i, pattern in enumerate(s.selection.exclude_series_descriptions):
        try:
            re.compile(pattern)
        except re.error as exc:
            problems.append(f"selection.exclude_series_descriptions[{i}]: bad regular expression ({exc})")
    if s.storage.retention_days < 0:
        problems.append(f"storage.retention_days: must be 0 (keep everything) or more, got "
                        f"{s.storage.retention_days}")
    if s.storage.purge_below_free_mb < 0:
        problems.append(f"storage.purge_below_free_mb: must be 0 (never) or more, got "
                        f"{s.storage.purge_below_free_mb}")
    problems += _check_positive(s.storage.retention_check_interval_s,
                                "storage.retention_check_interval_s")
    problems += _check_positive(s.workers.stale_after_s, "workers.stale_after_s")
    if s.api.max_request_bytes < 4096:
        problems.append(f"api.max_request_bytes: at least 4096, got {s.api.max_request_bytes}")
    if s.workers.count < 0:
        problems.append(f"workers.count: must be 0 or more, got {s.workers.count}")
    for name in ("base_delay_s", "max_delay_s", "max_attempts", "check_interval_s", "timeout_s"):
        problems += _check_positive(getattr(s.delivery, name), f"delivery.{name}")
    problems += _check_ae_title(s.delivery.calling_ae_title, "delivery.calling_ae_title")
    problems += _check_positive(s.api.conversation_retention_days, "api.conversation_retention_days")
    for i, token in enumerate(s.api.tokens):
        if len(token) < 16:
            problems.append(f"api.tokens[{i}]: too short (at least 16 characters)")
    problems += _check_positive(s.workers.max_attempts, "workers.max_attempts")
    problems += _check_positive(s.workers.poll_interval_s, "workers.poll_interval_s")
    for name in ("prefetch_memory_mb", "held_memory_mb"):
        if getattr(s.workers, name) < 0:
            problems.append(f"workers.{name}: must not be negative")
    if s.tls.enabled:
        for name in ("certificate", "private_key") + (
                ("ca_certificates",) if s.tls.require_peer_certificate else ()):
            path = getattr(s.tls, name)
            if not path:
                problems.append(f"tls.{name}: required when tls.enabled is true")
            elif not Path(path).expanduser().is_file():
                problems.append(f"tls.{name}: file not found: {path}")
    problems += _check_audit(s)
    problems += _check_prior(s.prior)
    if not 0 <= s.verdicts.send_after_s <= 86400:
        problems.append(f"verdicts.send_after_s: 0 (never send) to 86400 seconds, got "
                        f"{s.verdicts.send_after_s}")
    problems += _check_positive(s.verdicts.check_interval_s, "verdicts.check_interval_s")
    for i, peer in enumerate(s.peers):
        problems += _check_ae_title(peer.ae_title, f"peers[{i}].ae_title")
        if not peer.host.strip():
            problems.append(f"peers[{i}].host: must not be empty")
    names = set()
    for i, dest in enumerate(s.destinations):
        if dest.name in names:
            problems.append(f"destinations[{i}].name: duplicate name {dest.name!r}")
        names.add(dest.name)
        problems += _check_destination(s, dest, f"destinations[{i}]")
    problems += _check_alerts(s.alerts)
    pipeline_validate = getattr(s.pipeline, "validate", None)
    if callable(pipeline_validate):
        problems += [p if p.startswith("pipeline") else f"pipeline: {p}" for p in pipeline_validate()]
    return problems


def _check_destination(s: Settings, dest: Destination, key: str) -> list[str]:
    problems: list[str] = []
    if dest.url and (dest.host or dest.port or dest.ae_title):
        problems.append(f"{key}: give either url (DICOMweb) or ae_title, host and port "
                        "(DIMSE), not both")
    elif dest.url:
        problems += _check_dicomweb(dest, key)
    else:
        missing = [name for name in ("ae_title", "host", "port") if not getattr(dest, name)]
        if missing:
            problems.append(f"{key}: needs url (DICOMweb), or ae_title, host and port (DIMSE); "
                            f"missing: {', '.join(missing)}")
        problems += _check_ae_title(dest.ae_title, f"{key}.ae_title") if dest.ae_title else []
        problems += _check_port(dest.port, f"{key}.port") if dest.port else []
        if dest.tls and not s.tls.ca_certificates:
            problems.append(f"{key}.tls: needs tls.ca_certificates to verify the PACS")
        web_only = [name for name in ("auth", "username", "secret_file", "secret_env",
                                      "ca_certificates", "allow_insecure_http")
                    if getattr(dest, name)]
        if web_only:
            problems.append(f"{key}: {', '.join(web_only)}: for a DICOMweb destination "
                            "(url) only")
    allowed = VERIFY_INTERRUPTED[dest.protocol]
    if dest.verify_interrupted and dest.verify_interrupted not in allowed:
        problems.append(f"{key}.verify_interrupted: {dest.verify_interrupted!r} is not one of "
                        f"{', '.join(allowed)}")
    unknown = sorted(str(kind) for kind in set(dest.objects) - set(DESTINATION_KINDS))
    if unknown or not dest.objects:
        problems.append(f"{key}.objects: "
                        + (f"unknown {unknown}" if unknown else "empty: nothing would be sent")
                        + f" (use some of {', '.join(OBJECT_KINDS)}); also "
                        + ", ".join(f"{kind!r}" for kind in STUDY_KINDS)
                        + ", the readers' verdict SR")
    return problems


def _check_dicomweb(dest: Destination, key: str) -> list[str]:
    problems: list[str] = []
    parts = urlsplit(dest.url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return [f"{key}.url: {dest.url!r} is not an https:// URL of a DICOMweb service, e.g. "
                "https://pacs.example.org/dicom-web"]
    if parts.username or parts.password:
        problems.append(f"{key}.url: no credentials in the URL; use auth, username and "
                        "secret_file or secret_env")
    if parts.query or parts.fragment:
        problems.append(f"{key}.url: the service's base URL, without ?query or #fragment")
    if parts.scheme == "http" and not dest.allow_insecure_http:
        problems.append(f"{key}.url: http:// sends results (and credentials) unencrypted; use "
                        "https://, or set allow_insecure_http = true (a test PACS on loopback)")
    if dest.tls:
        problems.append(f"{key}.tls: for DIMSE only; a DICOMweb destination uses TLS by its "
                        "https:// url (ca_certificates to verify it)")
    if dest.auth not in DICOMWEB_AUTH:
        problems.append(f"{key}.auth: {dest.auth!r} is not one of basic, bearer (or empty: none)")
    elif dest.auth:
        if bool(dest.secret_file) == bool(dest.secret_env):
            problems.append(f"{key}: auth = {dest.auth!r} needs exactly one of secret_file, "
                            "secret_env (the " + ("password" if dest.auth == "basic" else
                                                  "token") + ")")
        elif dest.secret_file and not Path(dest.secret_file).expanduser().is_file():
            problems.append(f"{key}.secret_file: file not found: {dest.secret_file}")
        elif dest.secret_env and not os.environ.get(dest.secret_env):
            problems.append(f"{key}.secret_env: the environment variable {dest.secret_env} is "
                            "not set")
        if dest.auth == "basic" and not dest.username:
            problems.append(f"{key}.username: required with auth = \"basic\"")
    elif dest.username or dest.secret_file or dest.secret_env:
        problems.append(f"{key}.auth: set it to \"basic\" or \"bearer\" to use username, "
                        "secret_file or secret_env")
    if dest.ca_certificates and not Path(dest.ca_certificates).expanduser().is_file():
        problems.append(f"{key}.ca_certificates: file not found: {dest.ca_certificates}")
    return problems


def _check_alerts(receivers: list[AlertReceiver]) -> list[str]:
    problems: list[str] = []
    names: set[str] = set()
    for i, alert in enumerate(receivers):
        key = f"alerts[{i}]"
        if alert.name in names or not alert.name.strip():
            problems.append(f"{key}.name: " + ("empty" if not alert.name.strip()
                                               else f"duplicate name {alert.name!r}"))
        names.add(alert.name)
        if alert.kind not in ALERT_KINDS:
            problems.append(f"{key}.kind: {alert.kind!r} is not one of {', '.join(ALERT_KINDS)}")
            continue
        unknown = sorted(set(alert.triggers) - set(ALERT_TRIGGERS))
        if unknown or not alert.triggers:
            problems.append(f"{key}.triggers: " + (f"unknown {unknown}" if unknown else
                            "empty: it would never be sent") + f" (use some of "
                            f"{', '.join(ALERT_TRIGGERS)})")
        if alert.kind == "hl7":
            if alert.url or not alert.host:
                problems.append(f"{key}: kind = \"hl7\" needs host and port (MLLP), not url")
            problems += _check_port(alert.port, f"{key}.port")
        else:
            problems += _check_alert_url(alert, key)
        if alert.secret_file and alert.secret_env:
            problems.append(f"{key}: one of secret_file, secret_env, not both")
        elif alert.kind == "webhook" and not (alert.secret_file or alert.secret_env):
            problems.append(f"{key}: a webhook needs secret_file or secret_env (the HMAC key "
                            "its receiver checks the signature with)")
        if alert.secret_file and not Path(alert.secret_file).expanduser().is_file():
            problems.append(f"{key}.secret_file: file not found: {alert.secret_file}")
        elif alert.secret_env and not os.environ.get(alert.secret_env):
            problems.append(f"{key}.secret_env: the environment variable {alert.secret_env} "
                            "is not set")
        problems += _check_positive(alert.timeout_s, f"{key}.timeout_s")
    return problems


def _check_alert_url(alert: AlertReceiver, key: str) -> list[str]:
    parts = urlsplit(alert.url)
    if parts.scheme not in ("https", "http") or not parts.hostname or alert.host:
        return [f"{key}.url: kind = {alert.kind!r} needs an https:// url (not host and port), "
                "e.g. https://alerts.example.org/" + ("hook" if alert.kind == "webhook"
                                                       else "fhir")]
    problems = []
    if parts.username or parts.password:
        problems.append(f"{key}.url: no credentials in the URL; use secret_file or secret_env")
    if parts.scheme == "http" and not alert.allow_insecure_http:
        problems.append(f"{key}.url: http:// sends alerts unencrypted; use https://, or set "
                        "allow_insecure_http = true (a receiver on loopback)")
    if alert.ca_certificates and not Path(alert.ca_certificates).expanduser().is_file():
        problems.append(f"{key}.ca_certificates: file not found: {alert.ca_certificates}")
    return problems


def _check_audit(s: Settings) -> list[str]:
    a = s.audit
    problems = _check_positive(a.max_file_mb, "audit.max_file_mb")
    problems += _check_positive(a.syslog_queue, "audit.syslog_queue")
    if a.syslog:
        from node.audit.syslog import parse_collector
        try:
            scheme = parse_collector(a.syslog).scheme
        except ValueError as exc:
            return problems + [f"audit.syslog: {exc}"]
        if scheme == "tls" and not (a.ca_certificates or s.tls.ca_certificates):
            problems.append("audit.syslog: tls:// needs audit.ca_certificates (or "
                            "tls.ca_certificates) to verify the collector")
        for name in ("ca_certificates", "certificate", "private_key"):
            path = getattr(a, name)
            if path and not Path(path).expanduser().is_file():
                problems.append(f"audit.{name}: file not found: {path}")
        if bool(a.certificate) != bool(a.private_key):
            problems.append("audit.certificate and audit.private_key: both or neither")
    return problems


def _check_prior(p: PriorSection) -> list[str]:
    if not p.enabled:
        return []
    problems = _check_ae_title(p.ae_title, "prior.ae_title") + _check_port(p.port, "prior.port")
    if p.calling_ae_title:
        problems += _check_ae_title(p.calling_ae_title, "prior.calling_ae_title")
    if not p.host:
        problems.append("prior.host: the PACS to query must be given when prior.enabled")
    for key in ("lookback_days", "timeout_s", "poll_interval_s"):
        problems += _check_positive(getattr(p, key), f"prior.{key}")
    if p.wait_s < 0:
        problems.append(f"prior.wait_s: must not be negative, got {p.wait_s}")
    return problems


def _env_overlay(table: dict[str, Any], env: Mapping[str, str]) -> None:
    for section in ("node", "network", "storage", "completion", "selection", "workers",
                    "delivery", "api", "tls", "audit", "prior", "verdicts", "pipeline"):
        cls = Settings.__dataclass_fields__[section].default_factory  # type: ignore[misc]
        path = [] if section == "node" else [section]
        sub = table.setdefault(section, {})
        if not isinstance(sub, dict):
            raise ConfigError([f"{section}: expected a table"])
        apply_env(sub, cls, env, ENV_PREFIX, path, section)
    for name, item in (("peers", list[Peer]), ("destinations", list[Destination]),
                       ("alerts", list[AlertReceiver])):
        var = env_name(ENV_PREFIX, [name])
        if var in env:
            table[name] = coerce(env[var], item, f"{name} (from ${var})", from_env=True)


def load_settings(path: Path | str | None = None, env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read, overlay and validate; raise ConfigError listing every problem.

    path: a TOML file; None uses $TRAUMA_NODE_CONFIG, then config/node.toml if
    it exists, else the built-in defaults. overrides: dotted keys from the
    command line, e.g. {"node.dicom_port": 11113}.
    """
    env = os.environ if env is None else env
    if path is None and env.get("TRAUMA_NODE_CONFIG"):
        path = env["TRAUMA_NODE_CONFIG"]
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    table: dict[str, Any] = {}
    if path is not None:
        table = read_toml(path)
    _env_overlay(table, env)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        table.setdefault(section, {})[key] = value
    settings = build(Settings, table)
    problems = validate(settings)
    if problems:
        raise ConfigError(problems)
    return settings


def node_identity(settings: Settings) -> str:
    """This node's name among the nodes sharing its database: node.name, else host:port
    (two nodes on one host differ by their DICOM port)."""
    return settings.node.name or f"{socket.gethostname()[:40]}:{settings.node.dicom_port}"
