"""The questions and answers of each study, stored with it in the node's database.

One row per message: a question, then the answer it got (linked by
question_id). Earlier turns are given to the answerer as context; everything
survives a restart; messages older than api.conversation_retention_days are
purged. The table is declared in node.store.tables.
Text is stored, never logged.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Collection

from sqlalchemy import delete, func, or_, select

from pipeline.answering import Turn

from node.store.database import Index, Study, utcnow
from node.store.tables import MessageState, QaMessage

# Earlier turns handed to the answerer: enough for follow-ups, bounded for prompts.
HISTORY_TURNS = 20


def study_id(index: Index, study_uid: str) -> int | None:
    with index.session() as session:
        return session.execute(select(Study.id).where(Study.study_uid == study_uid)).scalar()


def add_question(index: Index, study_pk: int, text: str,
                 hemodynamic_status: str | None = None) -> int:
    with index.session() as session, session.begin():
        row = QaMessage(study_id=study_pk, role="question", text=text,
                        hemodynamic_status=hemodynamic_status)
        session.add(row)
        session.flush()
        return row.id


def add_answer(index: Index, study_pk: int, question_id: int, text: str, state: str,
               answerer: str, job_id: int | None) -> int:
    with index.session() as session, session.begin():
        row = QaMessage(study_id=study_pk, role="answer", text=text, question_id=question_id,
                        state=state, answerer=answerer, job_id=job_id)
        session.add(row)
        session.flush()
        return row.id


def history(index: Index, study_pk: int, before_id: int | None = None,
            turns: int = HISTORY_TURNS) -> list[Turn]:
    """The last answered turns of a study, oldest first (failed answers left out);
    with before_id, only the turns whose question was asked before that question
    (their answers may have been stored after it)."""
    with index.session() as session:
        query = select(QaMessage).where(QaMessage.study_id == study_pk)
        if before_id is not None:
            query = query.where(func.coalesce(QaMessage.question_id, QaMessage.id) < before_id)
        rows = session.execute(query.order_by(QaMessage.id)).scalars().all()
    questions = {r.id: r for r in rows if r.role == "question"}
    out = [Turn(questions[r.question_id].text, r.text) for r in rows
           if r.role == "answer" and r.question_id in questions
           and r.state != MessageState.FAILED.value]
    return out[-turns:] if turns else out


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="milliseconds") + "Z" if value is not None else None


def as_dict(row: QaMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"id": row.id, "role": row.role, "text": row.text,
                           "created_at": _iso(row.created_at)}
    if row.role == "question":
        out["hemodynamic_status"] = row.hemodynamic_status
    else:
        out.update(question_id=row.question_id, state=row.state, answerer=row.answerer,
                   job_id=row.job_id)
    return out


def messages(index: Index, study_pk: int) -> list[dict[str, Any]]:
    with index.session() as session:
        rows = session.execute(select(QaMessage).where(QaMessage.study_id == study_pk)
                               .order_by(QaMessage.id)).scalars().all()
        return [as_dict(r) for r in rows]


def counts(index: Index, study_pks: Collection[int]) -> dict[int, int]:
    """Questions asked per study (primary key), for the studies given."""
    with index.session() as session:
        return dict(session.execute(
            select(QaMessage.study_id, func.count())
            .where(QaMessage.role == "question", QaMessage.study_id.in_(list(study_pks)))
            .group_by(QaMessage.study_id)).all())


def purge(index: Index, retention_days: float, now: dt.datetime | None = None) -> int:
    """Delete the messages older than the retention period (an answer goes with its
    question). Returns the number of messages deleted."""
    cutoff = (now or utcnow()) - dt.timedelta(days=retention_days)
    with index.engine.begin() as conn:
        old_questions = select(QaMessage.id).where(QaMessage.role == "question",
                                                   QaMessage.created_at < cutoff)
        answers = conn.execute(delete(QaMessage).where(
            QaMessage.role == "answer",
            or_(QaMessage.created_at < cutoff, QaMessage.question_id.in_(old_questions))))
        questions = conn.execute(delete(QaMessage).where(QaMessage.role == "question",
                                                         QaMessage.created_at < cutoff))
        return answers.rowcount + questions.rowcount
