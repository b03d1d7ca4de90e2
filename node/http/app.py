"""The node's HTTP API: health, studies, their Findings and per-study Q&A, and the page.

Every endpoint but ``/healthz`` and the pages' static files (``/``, ``/agreement``, ``/static/``)
needs ``Authorization: Bearer <token>`` (node.http.auth). The OpenAPI document is at
``/openapi.json`` (with a token too). Questions and answers are stored in the
node's database (node.store.conversations) and never logged. One router per area:
node.http.health, node.http.studies, node.http.questions, node.http.verdicts (readers'
verdicts, their exports and the agreement page at ``/agreement``); what they share is an
ApiContext (node.http.context). A token is a service token (node.http.auth) or a reader's
own account (node.store.readers); request.state.principal says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from node import __version__, metrics
from node.config import Settings
from node.http import health, questions, studies, verdicts
from node.http.auth import BearerAuth, TokenBeforeBody, resolve_tokens
from node.http.context import ApiContext, is_uid
from node.store import conversations, readers
from node.store.database import Index
from pipeline.answering import Answerer
from pipeline.registry import create_answerer

if TYPE_CHECKING:
    from node.audit.trail import AuditTrail

log = logging.getLogger("trauma_node.http")

STATIC = Path(__file__).resolve().parent / "static"
PURGE_INTERVAL_S = 3600.0
# Shutting down, as shares of node.stop_timeout_s, so that the API has stopped before the
# node says it has: open answer streams get the first share to end by themselves, then they
# are cancelled, and their answers get the second to be stored as interrupted.
GRACEFUL_SHUTDOWN_SHARE = 0.3
ANSWER_STORE_SHARE = 0.4


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
    # Service tokens, and the readers' own accounts (node.store.readers): each request knows who.
    bearer = BearerAuth(tokens, names, audit.user_refused if audit is not None else None,
                        accounts=lambda token: readers.by_token(index, token))
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
            if audit is not None and is_uid(uid):
                who = getattr(request.state, "principal", None)
                user = who.name if who is not None else "unknown"
                host = request.client.host if request.client else ""
                await anyio.to_thread.run_sync(lambda: audit.accessed(
                    uid, user, host, f"{request.method} {request.url.path}", found))

    ctx = ApiContext(settings, index, auth, [auth, Depends(audited)], live)
    retention_days = settings.api.conversation_retention_days

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
            await anyio.to_thread.run_sync(ctx.open_answers.stop,
                                           ANSWER_STORE_SHARE * settings.node.stop_timeout_s)

    app = FastAPI(
        title="trauma-node", version=__version__, lifespan=lifespan,
        description=("DICOM node for abdominal trauma CT (research use only): studies, their "
                     "Findings, report and deliveries, and per-study questions answered as "
                     "Server-Sent Events. Every endpoint but /healthz needs "
                     "'Authorization: Bearer <token>'."),
        openapi_url=None, docs_url=None, redoc_url=None)
    app.state.answerer = answerer or create_answerer(settings.pipeline)
    app.add_middleware(TokenBeforeBody, auth=bearer, max_bytes=settings.api.max_request_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")}
                  for e in exc.errors()]
        return JSONResponse(status_code=422, content=jsonable_encoder(
            {"detail": _validation_message(errors), "errors": errors}))

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/agreement", include_in_schema=False)
    def agreement_page() -> FileResponse:
        return FileResponse(STATIC / "agreement.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for area in (health, studies, questions):
        app.include_router(area.router(ctx))
    app.include_router(verdicts.router(ctx, audit))
    return app


def server_config(app: FastAPI, host: str, port: int, stop_timeout_s: float) -> uvicorn.Config:
    """How the node serves the API: quiet logs, and a bounded wait for open answer
    streams at shutdown (a share of node.stop_timeout_s: GRACEFUL_SHUTDOWN_SHARE).
    log_config=None: uvicorn installs no handlers of its own, its loggers propagate to
    the node's (node.logs: control characters from a request escaped)."""
    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                          log_config=None,
                          timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SHARE * stop_timeout_s)
