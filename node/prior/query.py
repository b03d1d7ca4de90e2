"""C-FIND for a patient's earlier studies and C-MOVE of one to this node (Study Root)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom.sop_class import (StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelMove)

from node.config import PriorSection
from node.dicom.scu import AssociationFailed, QueryUnanswered, associate, client_ae


@dataclass(frozen=True)
class PriorStudy:
    study_uid: str
    study_date: str  # YYYYMMDD
    study_time: str


def _calling_ae(prior: PriorSection, our_ae: str) -> str:
    return prior.calling_ae_title or our_ae


def find_prior(prior: PriorSection, our_ae: str, patient_id: str, study_date: str,
               current_study_uid: str) -> PriorStudy | None:
    """The patient's most recent study of prior.modality within prior.lookback_days before
    study_date, other than the current one; None when there is none. Raises
    QueryUnanswered when the PACS refuses or does not answer."""
    model = StudyRootQueryRetrieveInformationModelFind
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = patient_id
    query.StudyInstanceUID = ""
    query.StudyTime = ""
    query.ModalitiesInStudy = prior.modality
    end = dt.datetime.strptime(study_date, "%Y%m%d").date()
    start = end - dt.timedelta(days=prior.lookback_days)
    query.StudyDate = f"{start:%Y%m%d}-{end:%Y%m%d}"
    found: list[PriorStudy] = []
    with _association(prior, our_ae, model) as assoc:
        code = None
        for status, identifier in assoc.send_c_find(query, model):
            code = int(status.Status) if status and "Status" in status else None
            if code in (0xFF00, 0xFF01) and identifier is not None:
                found.append(PriorStudy(str(identifier.get("StudyInstanceUID", "")),
                                        str(identifier.get("StudyDate", "")),
                                        str(identifier.get("StudyTime", ""))))
        if code is None:
            raise QueryUnanswered("no C-FIND response (refused, timed out or aborted)")
        if code != 0x0000:
            raise QueryUnanswered(f"C-FIND status 0x{code:04X}")
    # Earlier than today's study: a study of the same day is a phase of this one, or it.
    earlier = [s for s in found if s.study_uid and s.study_uid != current_study_uid
               and s.study_date < study_date]
    return max(earlier, key=lambda s: (s.study_date, s.study_time), default=None)


def move_here(prior: PriorSection, our_ae: str, study_uid: str) -> None:
    """C-MOVE the study to our own AE title (the PACS must know it as a destination)."""
    model = StudyRootQueryRetrieveInformationModelMove
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    with _association(prior, our_ae, model) as assoc:
        code = None
        for status, _identifier in assoc.send_c_move(query, _calling_ae(prior, our_ae), model):
            code = int(status.Status) if status and "Status" in status else None
        if code is None:
            raise QueryUnanswered("no C-MOVE response (refused, timed out or aborted)")
        if code not in (0x0000, 0xB000):
            raise QueryUnanswered(f"C-MOVE status 0x{code:04X}")


class _association:
    """One association to the PACS for one query model, released on exit."""

    def __init__(self, prior: PriorSection, our_ae: str, model) -> None:
        self.prior, self.our_ae, self.model = prior, our_ae, model

    def __enter__(self):
        ae = client_ae(_calling_ae(self.prior, self.our_ae), self.prior.timeout_s)
        ae.add_requested_context(self.model)
        try:
            self.assoc = associate(ae, self.prior.host, self.prior.port, self.prior.ae_title, None)
        except AssociationFailed as exc:
            raise QueryUnanswered(str(exc)) from None
        if not any(c.abstract_syntax == self.model for c in self.assoc.accepted_contexts):
            self.assoc.release()
            raise QueryUnanswered(f"{self.model.name} not accepted")
        return self.assoc

    def __exit__(self, *exc) -> None:
        if self.assoc.is_established:
            self.assoc.release()
