"""Questions about one study, answered as Server-Sent Events, and its stored conversation."""

from __future__ import annotations

import logging
from typing import Any, Literal

import anyio
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from node.http.answer_stream import AnswerStream
from node.http.context import ApiContext
from node.store import conversations, study_findings
from pipeline.answering import Question
from pipeline.findings import Findings

log = logging.getLogger("trauma_node.http")

MAX_QUESTION_CHARS = 2000


class QuestionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"question": "How much blood is there, and where?",
                      "hemodynamic_status": "stable"}]})
    question: str = Field(description="The question, plain text "
                          f"(1 to {MAX_QUESTION_CHARS} characters).")
    hemodynamic_status: Literal["stable", "unstable", "unknown"] | None = Field(
        None, description="The patient's hemodynamic status, when the decision support "
        "should assume one other than the one the study was analysed with.")

    @field_validator("question")
    @classmethod
    def _question(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("the question must not be empty")
        if len(value) > MAX_QUESTION_CHARS:
            raise ValueError(f"the question is too long ({len(value)} characters, at most "
                             f"{MAX_QUESTION_CHARS})")
        if "\0" in value:
            raise ValueError("the question must not contain NUL characters")
        return value


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["questions"])
    index, settings = ctx.index, ctx.settings

    @api.get("/studies/{study_uid}/conversation", dependencies=ctx.study_access)
    def conversation(study_uid: str) -> dict[str, Any]:
        """Every stored question and answer of the study, oldest first."""
        pk = ctx.study_pk_or_404(study_uid)
        return {"study_uid": study_uid,
                "retention_days": settings.api.conversation_retention_days,
                "messages": conversations.messages(index, pk)}

    @api.post("/studies/{study_uid}/questions", dependencies=ctx.study_access,
              response_class=StreamingResponse, responses={
                  200: {"description": "The answer as Server-Sent Events: `start`, `token` "
                        "(each line of the text on its own `data:` line), then `done` with "
                        "the stored `message_id` (or `error`).",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                  404: {"description": "Unknown study"},
                  409: {"description": "The study has no Findings yet"},
                  422: {"description": "Malformed request (the message says what)"}})
    async def ask(study_uid: str, body: QuestionIn, request: Request) -> StreamingResponse:
        """Ask a question about one study; the answer streams as Server-Sent Events and
        the question and answer are stored with the study (earlier turns are context)."""
        answerer = request.app.state.answerer

        def prepare() -> tuple[int, study_findings.StudyFindings, Question, int]:
            pk = ctx.study_pk_or_404(study_uid)
            found = ctx.findings_or_409(study_uid, checked=True)
            try:
                record = Findings.from_json_dict(found.findings)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("study %s: the Findings of job %d cannot be read: %s", study_uid,
                          found.job_id, type(exc).__name__)
                raise HTTPException(500, f"the Findings of job {found.job_id} cannot be read "
                                         f"({type(exc).__name__}: {exc})") from None
            images = (study_findings.chosen_images(index, settings.spool_dir, found.findings)
                      if getattr(answerer, "uses_images", False) else [])
            question_id = ctx.answer_order.ask(pk, lambda: conversations.add_question(
                index, pk, body.question, body.hemodynamic_status))
            # The history is read when the question's turn comes (AnswerOrder).
            return pk, found, Question(body.question, record, (), body.hemodynamic_status,
                                       images), question_id

        pk, found, question, question_id = await anyio.to_thread.run_sync(prepare)
        stream = AnswerStream(index, answerer, question, study_uid, pk, question_id,
                              found.job_id, open_answers=ctx.open_answers,
                              order=ctx.answer_order)
        stream.start()
        return StreamingResponse(stream.events(), media_type="text/event-stream", headers={
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return api
