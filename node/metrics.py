"""The node's Prometheus metrics: `GET /metrics`, in the text exposition format 0.0.4.

Two sources:
- Counted by the serving process since it started (counters): associations accepted
  and rejected by reason, C-STORE responses by outcome, bytes stored. Its receiving
  processes (node.dicom.receivers) send their counts within a moment (FLUSH_S there). Prometheus's
  rate() and increase() absorb their reset when the node restarts.
- Read from the database at each scrape (gauges): series, jobs, deliveries and
  questions by state, the age of the oldest queued job and pending delivery, the
  durations of the jobs of the last 24 hours, and the spool's free space. Workers on
  other hosts show up here too, because they share the database.

No UIDs, peer AE titles or patient data appear in a label, so a scrape can be
stored anywhere; the labels take a handful of fixed values each.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable

from sqlalchemy import case, func, select

from node import __version__

from node.store import conversations
from node.config import Settings
from node.store.database import (Index, Instance, Job, JobState, Series, SeriesState, Study, WorkerBeat,
                    utcnow)
from node.store.outbox import OutboxItem, OutboxState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RECENT = dt.timedelta(hours=24)  # the window of the job-duration figures
QUANTILES = (0.5, 0.9, 1.0)

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # counter | gauge
    help: str
    label: str | None = None  # a counter's one label, with its known values listed
    values: tuple[str, ...] = ()


# What the serving process counts (node.dicom.scp and node.dicom.policy say what each reason is).
ASSOCIATIONS_ACCEPTED = Family("trauma_node_associations_accepted_total", "counter",
                               "DICOM associations accepted since the node started.")
REJECTION_REASONS = ("called_ae", "calling_ae", "disk_low", "association_limit", "tls",
                     "no_request", "bad_request")
ASSOCIATIONS_REJECTED = Family(
    "trauma_node_associations_rejected_total", "counter",
    "DICOM associations rejected since the node started, by reason: called_ae (not our AE "
    "title), calling_ae (not an allowed peer), disk_low (below storage.min_free_disk_mb), "
    "association_limit (network.max_associations), and connections closed before they were "
    "associations: tls (no or a failed TLS handshake), no_request (no A-ASSOCIATE-RQ within "
    "network.association_request_timeout_s), bad_request (an A-ASSOCIATE-RQ with an AE title "
    "that cannot be one: empty, control characters, a backslash).", "reason",
    REJECTION_REASONS)
CSTORE_RESPONSES = Family(
    "trauma_node_cstore_responses_total", "counter",
    "C-STORE responses since the node started, by outcome: stored, duplicate (already held, "
    "answered Success), out_of_resources (0xA700), does_not_match_sop_class (0xA900: a CT "
    "image without Pixel Data), cannot_understand (0xC000).", "outcome",
    ("stored", "duplicate", "out_of_resources", "does_not_match_sop_class", "cannot_understand"))
RECEIVED_BYTES = Family("trauma_node_received_bytes_total", "counter",
                        "Bytes of DICOM objects stored in the spool since the node started.")
WORKER_RESTARTS = Family("trauma_node_worker_restarts_total", "counter",
                         "Worker processes of `serve` that died (killed, out of memory) and "
                         "were restarted, since the node started.")
INTERRUPTED_DELIVERIES = Family(
    "trauma_node_interrupted_deliveries_total", "counter",
    "Result objects found cut off in the middle of their delivery (the node crashed or "
    "stopped, or the destination did not answer, after the C-STORE or STOW-RS went out), since "
    "the node started, by what was done: present (C-FIND or QIDO-RS found it at the "
    "destination: marked sent, not sent again), absent (found missing: sent again), unverified "
    "(sent again unasked: no answer to the query, or verify_interrupted = \"resend\"; it may "
    "be there twice).",
    "outcome", ("present", "absent", "unverified"))
AUDIT_MESSAGES = Family(
    "trauma_node_audit_messages_total", "counter",
    "Audit messages since the node started, by outcome: written (to the local audit file), "
    "failed (could not be written there), sent (to the syslog collector), dropped (the "
    "collector was unreachable and audit.syslog_queue full: the oldest queued one dropped; "
    "it is in the local file).", "outcome", ("written", "failed", "sent", "dropped"))
ALERTS = Family(
    "trauma_node_alert_attempts_total", "counter",
    "Critical-result alert attempts since the node started ([[alerts]], node.alerts), by "
    "outcome: sent (acknowledged), failed (to be retried), dead (a dead letter).", "outcome",
    ("sent", "failed", "dead"))
COUNTED = (ASSOCIATIONS_ACCEPTED, ASSOCIATIONS_REJECTED, CSTORE_RESPONSES, RECEIVED_BYTES,
           WORKER_RESTARTS, INTERRUPTED_DELIVERIES, AUDIT_MESSAGES, ALERTS)


Snapshot = dict[tuple[Family, "str | None"], float]


class Counters:
    """Thread-safe counters of the serving process, with those its receiving processes
    report (node.dicom.receivers: each sends its snapshot(), kept by merge())."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[Family, str | None], float] = defaultdict(float)
        self._others: dict[str, Snapshot] = {}  # another process's latest counts, by name

    def snapshot(self) -> Snapshot:
        with self._lock:
            return dict(self._values)

    def merge(self, source: str, snapshot: Snapshot) -> None:
        """source's counts since it started (they only grow); kept after it ends, so that a
        restarted receiving process adds to them, as counters must."""
        with self._lock:
            self._others[source] = snapshot

    def add(self, family: Family, label_value: str | None = None, amount: float = 1.0) -> None:
        if (family.label is None) != (label_value is None) or (
                family.values and label_value not in family.values):
            raise ValueError(f"{family.name}: label value {label_value!r} is not one of "
                             f"{family.values}")
        with self._lock:
            self._values[(family, label_value)] += amount

    def value(self, family: Family, label_value: str | None = None) -> float:
        key = (family, label_value)
        with self._lock:
            return self._values.get(key, 0.0) + sum(
                other.get(key, 0.0) for other in self._others.values())

    def samples(self, family: Family) -> list[tuple[Labels, float]]:
        """Every known label value, zero included, so that a rate never lacks a series."""
        if family.label is None:
            return [((), self.value(family))]
        return [(((family.label, v),), self.value(family, v)) for v in family.values]


@dataclass
class LiveFigures:
    """What only the serving process knows: its counters and what is open right now.
    The API given none (a test, or the API run alone) reports the database figures."""

    counters: Counters = field(default_factory=Counters)
    open_associations: Callable[[], int] = lambda: 0
    spool_free_bytes: Callable[[], int] | None = None
    audit_queued: Callable[[], int] = lambda: 0
    started_at: float = field(default_factory=time.time)


class Exposition:
    """Families and their samples, written out in the text format."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, family: Family, samples: Iterable[tuple[Labels, float]]) -> None:
        self.lines += [f"# HELP {family.name} {_escape_help(family.help)}",
                       f"# TYPE {family.name} {family.kind}"]
        for labels, value in samples:
            self.lines.append(f"{family.name}{_labels(labels)} {_number(value)}")

    def gauge(self, name: str, help_text: str, samples: Iterable[tuple[Labels, float]]) -> None:
        self.family(Family(name, "gauge", help_text), samples)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(index: Index, settings: Settings, live: LiveFigures | None = None,
           open_answers: int = 0, now: dt.datetime | None = None) -> str:
    """The whole scrape."""
    now = now or utcnow()
    out = Exposition()
    backends = vars(settings.pipeline.backends)
    out.gauge("trauma_node_info", "The node's version, AE title and pipeline backends (value 1).",
              [((("ae_title", settings.node.ae_title), ("version", __version__),
                 *sorted(backends.items())), 1)])
    if live is not None:
        out.gauge("trauma_node_start_time_seconds", "When the node started, Unix time.",
                  [((), live.started_at)])
        for family in COUNTED:
            out.family(family, live.counters.samples(family))
        out.gauge("trauma_node_associations_open", "DICOM associations open now.",
                  [((), live.open_associations())])
        out.gauge("trauma_node_audit_syslog_queued", "Audit messages waiting for the syslog "
                  "collector (at most audit.syslog_queue).", [((), live.audit_queued())])
        if live.spool_free_bytes is not None:
            out.gauge("trauma_node_spool_free_bytes", "Free space where the spool is, in bytes.",
                      [((), live.spool_free_bytes())])
    out.gauge("trauma_node_spool_min_free_bytes", "The floor below which associations and "
              "C-STOREs are refused (storage.min_free_disk_mb), in bytes.",
              [((), settings.storage.min_free_disk_mb * 2**20)])
    _database_figures(out, index, now, settings.workers.stale_after_s)
    out.gauge("trauma_node_answers_open", "Answers to questions being streamed now.",
              [((), open_answers)])
    return out.text()


def _database_figures(out: Exposition, index: Index, now: dt.datetime,
                      stale_after_s: float) -> None:
    with index.session() as session:
        def count_by(column, model) -> dict[str, int]:
            return dict(session.execute(select(column, func.count()).select_from(model)
                                        .group_by(column)).all())

        studies = session.execute(select(func.count()).select_from(Study)).scalar_one()
        instances = session.execute(select(func.count()).select_from(Instance)).scalar_one()
        series = count_by(Series.state, Series)
        jobs = count_by(Job.state, Job)
        deliveries = count_by(OutboxItem.state, OutboxItem)
        oldest_job = session.execute(select(func.min(Job.created_at))
                                     .where(Job.state == JobState.QUEUED.value)).scalar()
        oldest_delivery = session.execute(select(func.min(OutboxItem.created_at)).where(
            OutboxItem.state == OutboxState.PENDING.value)).scalar()
        recent = session.execute(select(Job.state, Job.started_at, Job.finished_at).where(
            Job.finished_at >= now - RECENT)).all()
        turnarounds = _recent_turnarounds(session, now)
        beating = session.execute(select(WorkerBeat.name).where(
            WorkerBeat.last_seen >= now - dt.timedelta(seconds=stale_after_s))).scalars().all()
        messages = session.execute(
            select(conversations.QaMessage.role, conversations.QaMessage.state, func.count())
            .group_by(conversations.QaMessage.role, conversations.QaMessage.state)).all()

    out.gauge("trauma_node_studies", "Studies in the index.", [((), studies)])
    out.gauge("trauma_node_instances", "DICOM instances in the index.", [((), instances)])
    out.gauge("trauma_node_series", "Series by state: receiving (the completion timer runs), "
              "queued (selected, a job exists), skipped (not analysed, see its reason).",
              _by_state(series, [s.value for s in SeriesState]))
    out.gauge("trauma_node_jobs", "Analysis jobs by state.",
              _by_state(jobs, [s.value for s in JobState]))
    roles: dict[str, int] = defaultdict(int)
    for name in beating:  # host/role-N
        roles[name.rsplit("/", 1)[-1].rsplit("-", 1)[0]] += 1
    out.gauge("trauma_node_workers_alive", "Workers that beat within workers.stale_after_s, "
              "by role: serve (started by `serve`), worker (`trauma-node worker`, any host).",
              _by_state(roles, ["serve", "worker"], label="role"))
    out.gauge("trauma_node_oldest_queued_job_age_seconds",
              "How long the oldest queued job has waited for a worker (0: none waits).",
              [((), _age(oldest_job, now))])
    out.gauge("trauma_node_deliveries", "Result objects by delivery state, per destination row: "
              "pending (being tried), sent, dead (gave up; `trauma-node retry`).",
              _by_state(deliveries, [s.value for s in OutboxState]))
    out.gauge("trauma_node_oldest_pending_delivery_age_seconds",
              "How long the oldest pending delivery has waited (0: none pending).",
              [((), _age(oldest_delivery, now))])
    finished: dict[str, int] = defaultdict(int)
    seconds = []
    for state, started, ended in recent:
        finished[state] += 1
        if state == JobState.DONE.value and started is not None:
            seconds.append((ended - started).total_seconds())
    out.gauge("trauma_node_recent_jobs", "Jobs that ended in the last 24 hours, by state.",
              _by_state(finished, [JobState.DONE.value, JobState.FAILED.value]))
    out.gauge("trauma_node_recent_job_duration_seconds",
              "Pipeline and SEG/SR time of the jobs done in the last 24 hours: median, 90th "
              "percentile and longest (absent when there were none).",
              [((("quantile", _number(q)),), _quantile(seconds, q)) for q in QUANTILES]
              if seconds else [])
    out.gauge("trauma_node_recent_turnaround_seconds",
              "From the last image of a series version received to its last result object "
              "delivered, for the versions delivered to every destination in the last 24 "
              "hours: median, 90th percentile and longest (absent when there were none).",
              [((("quantile", _number(q)),), _quantile(turnarounds, q)) for q in QUANTILES]
              if turnarounds else [])
    out.gauge("trauma_node_qa_messages", "Stored questions and answers (answers by state), "
              "within api.conversation_retention_days.",
              [((("role", role), ("state", state if role == "answer" else "")), n)
               for role, state, n in sorted(messages, key=lambda m: (m[0], m[1] or ""))])


def _recent_turnarounds(session, now: dt.datetime) -> list[float]:
    """Seconds from the last image received to the last object delivered, per series
    version whose every outbox row was sent, the last of them in the window."""
    versions = session.execute(
        select(OutboxItem.series_uid, OutboxItem.series_version, func.max(OutboxItem.sent_at))
        .group_by(OutboxItem.series_uid, OutboxItem.series_version)
        .having(func.sum(case((OutboxItem.state == OutboxState.SENT.value, 0), else_=1)) == 0,
                func.max(OutboxItem.sent_at) >= now - RECENT)).all()
    if not versions:
        return []
    last_image: dict[tuple[str, int], dt.datetime] = {}
    rows = session.execute(
        select(Series.series_uid, Instance.series_version, func.max(Instance.received_at))
        .join(Instance, Instance.series_id == Series.id)
        .where(Series.series_uid.in_({uid for uid, _, _ in versions}))
        .group_by(Series.series_uid, Instance.series_version)).all()
    for uid, version, received in rows:
        last_image[(uid, version)] = received
    out = []
    for uid, version, delivered in versions:
        # Version N is made of the images of versions 1..N (node.store.database.Instance).
        received = [t for (u, v), t in last_image.items() if u == uid and v <= version]
        if received:
            out.append(max(0.0, (delivered - max(received)).total_seconds()))
    return out


def _by_state(counts: dict[str, int], states: list[str], label: str = "state"
              ) -> list[tuple[Labels, float]]:
    """Every known state, zero included, so that alerts on a state never see it vanish."""
    return [(((label, s),), counts.get(s, 0))
            for s in [*states, *sorted(set(counts) - set(states))]]


def _age(since: dt.datetime | None, now: dt.datetime) -> float:
    return max(0.0, (now - since).total_seconds()) if since is not None else 0.0


def _quantile(values: list[float], q: float) -> float:
    """The nearest-rank quantile (q=1: the largest)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
    return ordered[rank - 1]


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_value(v)}"' for k, v in labels) + "}"


def _escape_value(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
