"""The lookup loop of `serve`: for each study that arrives, its patient's prior study is
looked for in the PACS and moved here, off the C-STORE handler and off the workers. The
moved prior is received, completed and analysed like any study; the new study's job
compares with its Findings (node.prior.comparison)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select

from node.config import Settings
from node.dicom.scu import QueryUnanswered
from node.prior import state
from node.prior.query import find_prior, move_here
from node.store.database import Index, utcnow
from node.store.tables import Instance, Series, Study

log = logging.getLogger("trauma_node.prior")


def _patient_and_date(path: Path) -> tuple[str, str]:
    """(Patient ID, Study Date) from a stored file's header: the query needs them and the
    index holds neither. Never logged."""
    ds = dcmread(path, stop_before_pixels=True, specific_tags=["PatientID", "StudyDate"])
    return str(ds.get("PatientID", "") or ""), str(ds.get("StudyDate", "") or "")


def _a_file_of(conn, study_id: int) -> str | None:
    """The spool path of one of the study's instances (relative), None before the first."""
    return conn.execute(select(Instance.path).join(Series, Instance.series_id == Series.id)
                        .where(Series.study_id == study_id).limit(1)).scalar()


class PriorLookup:
    def __init__(self, settings: Settings, index: Index) -> None:
        self.settings, self.index = settings, index
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Only studies that arrive while it runs (less a start-up grace): a first start
        # with a full index must not query the PACS for every old study.
        self.since = utcnow() - dt.timedelta(seconds=settings.prior.wait_s)
        self.seen_up_to = 0  # the last study id looked at: each study is looked at once
        self.resumed = False  # the lookups cut off by a stop are done again first

    def start(self) -> None:
        if not self.settings.prior.enabled:
            return
        self._thread = threading.Thread(target=self._run, name="prior-lookup", daemon=True)
        self._thread.start()

    def stop(self) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.settings.prior.timeout_s)
        return self._thread is None or not self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.prior.poll_interval_s):
            try:
                for study_uid, path in self._new_studies():
                    self.look_up(study_uid, path)
            except Exception:  # noqa: BLE001 - the loop must outlive one bad study
                log.exception("prior lookup failed")

    def _new_studies(self) -> list[tuple[str, Path]]:
        """Studies received since the last look, each with one of its files; first, the
        studies whose lookup was cut off by a stop (node.prior.state LOOKING at start)."""
        found: list[tuple[str, Path]] = []
        with self.index.engine.connect() as conn:
            if not self.resumed:
                found += self._cut_off(conn)
                self.resumed = True
            studies = conn.execute(select(Study.id, Study.study_uid).where(
                Study.created_at >= self.since, Study.id > self.seen_up_to,
            ).order_by(Study.id)).all()
            for study_id, study_uid in studies:
                path = _a_file_of(conn, study_id)
                if path is None:
                    break  # its first instance is not indexed yet: next time
                self.seen_up_to = study_id
                if state.read(self.settings.data_dir, study_uid) is None:
                    found.append((study_uid, self.settings.spool_dir / path))
        return found

    def _cut_off(self, conn) -> list[tuple[str, Path]]:
        """Studies still LOOKING when this process starts: their lookup was cut off (the
        loop runs one lookup at a time, in this process), so it is done again; its result
        re-reports the study if the job reported meanwhile (node.prior.amendment). A study
        removed since (retention) is let go."""
        found: list[tuple[str, Path]] = []
        for study_uid in state.looking(self.settings.data_dir):
            study_id = conn.execute(select(Study.id).where(
                Study.study_uid == study_uid)).scalar()
            path = _a_file_of(conn, study_id) if study_id is not None else None
            if path is None:
                state.forget(self.settings.data_dir, study_uid)
                continue
            log.info("study %s: its prior lookup was cut off by a stop; looked up again",
                     study_uid)
            found.append((study_uid, self.settings.spool_dir / path))
        return found

    def look_up(self, study_uid: str, path: Path) -> None:
        data_dir, prior = self.settings.data_dir, self.settings.prior
        our_ae = self.settings.node.ae_title
        state.write(data_dir, study_uid, state.LOOKING)
        patient_id, study_date = _patient_and_date(path)
        if not patient_id or len(study_date) != 8:
            why = "the study has no patient ID or study date to query with"
            state.write(data_dir, study_uid, state.NO_PRIOR, why=why)
            log.info("study %s: no prior looked up: %s", study_uid, why)
            return
        try:
            found = find_prior(prior, our_ae, patient_id, study_date, study_uid)
            if found is None:
                why = f"none in the PACS within {prior.lookback_days} days"
                state.write(data_dir, study_uid, state.NO_PRIOR, why=why)
                log.info("study %s: no prior study: %s", study_uid, why)
                return
            # Marked first: its arrival must not start a lookup of its own.
            state.write(data_dir, found.study_uid, state.IS_PRIOR, of=study_uid)
            move_here(prior, our_ae, found.study_uid)
        except QueryUnanswered as exc:
            why = f"the PACS {prior.ae_title} refused or did not answer: {exc}"
            state.write(data_dir, study_uid, state.UNANSWERED, why=why)
            log.warning("study %s: no prior study: %s", study_uid, why)
            return
        state.write(data_dir, study_uid, state.RETRIEVED, prior_study_uid=found.study_uid,
                    prior_study_date=found.study_date)
        log.info("study %s: prior study %s of %s retrieved", study_uid, found.study_uid,
                 found.study_date)
