"""What every router of the API shares: the settings, the database, the token check, the
answers in flight, and the look-ups that turn a study UID into 404 or 409."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException

from node import metrics
from node.config import Settings
from node.http.answer_stream import AnswerOrder, OpenAnswers
from node.store import conversations, study_findings
from node.store.database import Index

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_uid(value: str) -> bool:
    return len(value) <= 64 and bool(_UID.match(value))


def check_uid(study_uid: str) -> str:
    if not is_uid(study_uid):
        raise HTTPException(422, f"study_uid: {study_uid[:80]!r} is not a DICOM UID (digits and "
                                 "dots, at most 64 characters)")
    return study_uid


@dataclass
class ApiContext:
    settings: Settings
    index: Index
    auth: Any  # Depends(BearerAuth): every endpoint but /healthz and the page
    study_access: list[Any]  # auth, then one audit message per study read
    live: metrics.LiveFigures | None = None
    open_answers: OpenAnswers = field(default_factory=OpenAnswers)
    answer_order: AnswerOrder = field(default_factory=AnswerOrder)

    def study_pk_or_404(self, study_uid: str) -> int:
        pk = conversations.study_id(self.index, check_uid(study_uid))
        if pk is None:
            raise HTTPException(404, f"unknown study {study_uid}")
        return pk

    def findings_or_409(self, study_uid: str, checked: bool = False
                        ) -> study_findings.StudyFindings:
        if not checked:
            self.study_pk_or_404(study_uid)
        found = study_findings.latest_findings(self.index, study_uid)
        if found is None:
            detail = study_findings.study_detail(self.index, study_uid, False) or {}
            raise HTTPException(409, f"study {study_uid} has no Findings yet (state: "
                                     f"{detail.get('state', 'unknown')}); ask again when it is done")
        return found
