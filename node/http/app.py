"""The node's HTTP API: health, studies, their Findings and per-study Q&A, and the page.

Every endpoint but ``/healthz`` and the page's static files (``/``, ``/static/``)
needs ``Authorization: Bearer <token>`` (node.http.auth). The OpenAPI document is at
``/openapi.json`` (with a token too). Questions and answers are stored in the
node's database (node.store.conversations) and never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.answering import Answerer, Question
from pipeline.registry import create_answerer
from pipeline.findings import Findings

from node import __version__, metrics

from node.store import conversations, outbox, status, study_findings
from node.http.auth import BearerAuth, TokenBeforeBody, resolve_tokens
from node.config import Settings
from node.store.database import Index
from node.http.answer_stream import AnswerOrder, AnswerStream, OpenAnswers

if TYPE_CHECKING:
    from node.audit.trail import AuditTrail

log = logging.getLogger("trauma_node.http")

STATIC = Path(__file__).resolve().parent / "static"
MAX_QUESTION_CHARS = 2000
PURGE_INTERVAL_S = 3600.0
# Shutting down, as shares of node.stop_timeout_s, so that the API has stopped before the
# node says it has: open answer streams get the first share to end by themselves, then they
# are cancelled, and their answers get the second to be stored as interrupted.
GRACEFUL_SHUTDOWN_SHARE = 0.3
ANSWER_STORE_SHARE = 0.4
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


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


def _check_uid(study_uid: str) -> str:
    if len(study_uid) > 64 or not _UID.match(study_uid):
        raise HTTPException(422, f"study_uid: {study_uid[:80]!r} is not a DICOM UID (digits and "
                                 "dots, at most 64 characters)")
    return study_uid


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        msg = e.get("msg", "invalid")
        if e.get("type") == "json_invalid":
            loc, msg = "body", "not valid JSON: send {\"question\": \"...\"}"
        elif e.get("type") == "missing" and loc == "question":
            msg = "required: send {\"question\": \"...\"}"
        elif e.get("type") == "extra_forbidden":
            msg = "unknown field (allowed: question, hemodynamic_status)"
        elif e.get("type") == "model_attributes_type":
            msg = "expected a JSON object such as {\"question\": \"...\"}"
        parts.append(f"{loc}: {msg.removeprefix('Value error, ')}")
    return "; ".join(parts)


def create_app(settings: Settings, index: Index, answerer: Answerer | None = None,
               tokens: list[str] | None = None,
               live: metrics.LiveFigures | None = None,
               audit: AuditTrail | None = None) -> FastAPI:
    """The API. answerer: None builds the one chosen in the pipeline settings;
    tokens: None resolves them from the settings (generating one at first start);
    live: what the serving process counts, for /metrics (None: database figures only);
    audit: the audit trail, told of refused requests and of each study read."""
    names = None
    if tokens is None:
        resolved = resolve_tokens(settings)
        tokens, names = resolved.tokens, resolved.names
        if resolved.source == "generated":
            log.warning("no API token configured: generated one and stored it in %s (mode "
                        "0600); send it as 'Authorization: Bearer <token>'", resolved.path)
        elif resolved.source == "file":
            log.info("API token read from %s", resolved.path)
    bearer = BearerAuth(tokens, names, audit.user_refused if audit is not None else None)
    auth = Depends(bearer)

    async def audited(request: Request):
        """A study's endpoint, once the token passed: one audit message (DICOM Instances
        Accessed) naming the token's holder, after the answer is known (404: unknown)."""
        found = True
        try:
            yield
        except HTTPException as exc:
            found = exc.status_code != 404
            raise
        finally:
            uid = request.path_params.get("study_uid", "")
            if audit is not None and _UID.match(uid) and len(uid) <= 64:
                user = bearer.name_of(request.headers.get("authorization")) or "unknown"
                host = request.client.host if request.client else ""
                await anyio.to_thread.run_sync(lambda: audit.accessed(
                    uid, user, host, f"{request.method} {request.url.path}", found))

    study_access = [auth, Depends(audited)]
    answerer = answerer or create_answerer(settings.pipeline)
    retention_days = settings.api.conversation_retention_days
    open_answers = OpenAnswers()
    answer_order = AnswerOrder()

    async def purge_once() -> None:
        try:
            removed = await anyio.to_thread.run_sync(
                conversations.purge, index, retention_days)
            if removed:
                log.info("purged %d questions and answers older than %s days", removed,
                         retention_days)
        except Exception as exc:  # noqa: BLE001 - retried at the next interval
            log.warning("conversation purge failed: %s", exc)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        await purge_once()

        async def every_interval() -> None:
            while True:
                await asyncio.sleep(PURGE_INTERVAL_S)
                await purge_once()

        task = asyncio.create_task(every_interval())
        try:
            yield
        finally:
            task.cancel()
            await anyio.to_thread.run_sync(open_answers.stop,
                                           ANSWER_STORE_SHARE * settings.node.stop_timeout_s)

    app = FastAPI(
        title="trauma-node", version=__version__, lifespan=lifespan,
        description=("DICOM node for abdominal trauma CT (research use only): studies, their "
                     "Findings, report and deliveries, and per-study questions answered as "
                     "Server-Sent Events. Every endpoint but /healthz needs "
                     "'Authorization: Bearer <token>'."),
        openapi_url=None, docs_url=None, redoc_url=None)
    app.state.answerer = answerer
    app.add_middleware(TokenBeforeBody, auth=bearer, max_bytes=settings.api.max_request_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")}
                  for e in exc.errors()]
        return JSONResponse(status_code=422, content=jsonable_encoder(
            {"detail": _validation_message(errors), "errors": errors}))

    def study_pk_or_404(study_uid: str) -> int:
        pk = conversations.study_id(index, _check_uid(study_uid))
        if pk is None:
            raise HTTPException(404, f"unknown study {study_uid}")
        return pk

    def findings_or_409(study_uid: str, checked: bool = False) -> study_findings.StudyFindings:
        if not checked:
            study_pk_or_404(study_uid)
        found = study_findings.latest_findings(index, study_uid)
        if found is None:
            detail = study_findings.study_detail(index, study_uid, False) or {}
            raise HTTPException(409, f"study {study_uid} has no Findings yet (state: "
                                     f"{detail.get('state', 'unknown')}); ask again when it is done")
        return found

    # --- open: health and the page ------------------------------------------------------

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        """Liveness; needs no token."""
        return {"status": "ok", "ae_title": settings.node.ae_title, "version": __version__}

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/metrics", tags=["health"], dependencies=[auth], response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text exposition format 0.0.4",
                              "content": {metrics.CONTENT_TYPE: {"schema": {"type": "string"}}}}})
    def prometheus_metrics() -> PlainTextResponse:
        """Prometheus metrics: DICOM associations and C-STORE outcomes since start-up;
        series, jobs, deliveries and questions by state; queue and delivery ages; recent
        job durations; spool free space. No patient data or UIDs."""
        return PlainTextResponse(metrics.render(index, settings, live, len(open_answers)),
                                 media_type=metrics.CONTENT_TYPE)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[auth])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    # --- studies -------------------------------------------------------------------------

    @app.get("/studies", tags=["studies"], dependencies=[auth])
    def studies(response: Response, summary: bool = False,
                limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)
                ) -> list[dict[str, Any]]:
        """The studies, newest first, ``limit`` at a time from ``offset`` (the header
        X-Total-Count gives how many there are): each with its series, their states, skip
        reasons, jobs and deliveries; ``?summary=true``: one line per study (state, risk
        tier, volumes, grades, questions)."""
        page = status.Page(limit, offset)
        response.headers["X-Total-Count"] = str(status.study_count(index))
        if summary:
            return study_findings.studies_overview(
                index, page, lambda pks: conversations.counts(index, pks))
        return status.studies(index, page)

    @app.get("/studies/{study_uid}", tags=["studies"], dependencies=study_access)
    def study(study_uid: str) -> dict[str, Any]:
        """One study: its state, series, a summary of its Findings and its deliveries."""
        study_pk_or_404(study_uid)
        found = study_findings.latest_findings(index, study_uid)
        detail = study_findings.study_detail(index, study_uid, found is not None)
        if detail is None:
            raise HTTPException(404, f"unknown study {study_uid}")
        detail["findings"] = ({**found.meta(), **study_findings.summary(found.findings)}
                              if found else None)
        detail["deliveries"] = outbox.items_for_study(index, study_uid)
        return detail

    @app.get("/studies/{study_uid}/findings", tags=["studies"], dependencies=study_access)
    def findings(study_uid: str) -> dict[str, Any]:
        """The Findings (findings.json, pipeline/README.md) of the latest analysis of the
        study's current series version. 409 while there are none yet."""
        found = findings_or_409(study_uid)
        return {**found.meta(), "findings": found.findings}

    @app.get("/studies/{study_uid}/report", tags=["studies"], dependencies=study_access)
    def report(study_uid: str) -> dict[str, Any]:
        """The report text of the study's Findings."""
        found = findings_or_409(study_uid)
        return {**found.meta(), "research_use": found.findings.get("research_use"),
                "report": found.findings.get("report", "")}

    @app.get("/studies/{study_uid}/deliveries", tags=["studies"], dependencies=study_access)
    def deliveries(study_uid: str) -> dict[str, Any]:
        """Where each result object (SEG, SR) stands with each destination."""
        study_pk_or_404(study_uid)
        return {"study_uid": study_uid, "deliveries": outbox.items_for_study(index, study_uid)}

    # --- questions and answers -----------------------------------------------------------

    @app.get("/studies/{study_uid}/conversation", tags=["questions"], dependencies=study_access)
    def conversation(study_uid: str) -> dict[str, Any]:
        """Every stored question and answer of the study, oldest first."""
        pk = study_pk_or_404(study_uid)
        return {"study_uid": study_uid, "retention_days": retention_days,
                "messages": conversations.messages(index, pk)}

    @app.post("/studies/{study_uid}/questions", tags=["questions"], dependencies=study_access,
              response_class=StreamingResponse, responses={
                  200: {"description": "The answer as Server-Sent Events: `start`, `token` "
                        "(each line of the text on its own `data:` line), then `done` with "
                        "the stored `message_id` (or `error`).",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                  404: {"description": "Unknown study"},
                  409: {"description": "The study has no Findings yet"},
                  422: {"description": "Malformed request (the message says what)"}})
    async def ask(study_uid: str, body: QuestionIn) -> StreamingResponse:
        """Ask a question about one study; the answer streams as Server-Sent Events and
        the question and answer are stored with the study (earlier turns are context)."""

        def prepare() -> tuple[int, study_findings.StudyFindings, Question, int]:
            pk = study_pk_or_404(study_uid)
            found = findings_or_409(study_uid, checked=True)
            try:
                record = Findings.from_json_dict(found.findings)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("study %s: the Findings of job %d cannot be read: %s", study_uid,
                          found.job_id, type(exc).__name__)
                raise HTTPException(500, f"the Findings of job {found.job_id} cannot be read "
                                         f"({type(exc).__name__}: {exc})") from None
            images = (study_findings.chosen_images(index, settings.spool_dir, found.findings)
                      if getattr(app.state.answerer, "uses_images", False) else [])
            question_id = answer_order.ask(pk, lambda: conversations.add_question(
                index, pk, body.question, body.hemodynamic_status))
            # The history is read when the question's turn comes (AnswerOrder).
            return pk, found, Question(body.question, record, (), body.hemodynamic_status,
                                       images), question_id

        pk, found, question, question_id = await anyio.to_thread.run_sync(prepare)
        stream = AnswerStream(index, app.state.answerer, question, study_uid, pk, question_id,
                              found.job_id, open_answers=open_answers, order=answer_order)
        stream.start()
        return StreamingResponse(stream.events(), media_type="text/event-stream", headers={
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def server_config(app: FastAPI, host: str, port: int, stop_timeout_s: float) -> uvicorn.Config:
    """How the node serves the API: quiet logs, and a bounded wait for open answer
    streams at shutdown (a share of node.stop_timeout_s: GRACEFUL_SHUTDOWN_SHARE).
    log_config=None: uvicorn installs no handlers of its own, its loggers propagate to
    the node's (node.logs: control characters from a request escaped)."""
    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                          log_config=None,
                          timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SHARE * stop_timeout_s)
