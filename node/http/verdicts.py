"""The radiologist's verdict over HTTP: who is signed in, the verdicts on a study's findings,
their exports (JSON, DICOM SR) and the node's agreement with its readers.

| endpoint | who | what |
| --- | --- | --- |
| GET /me | any token | who the token belongs to (a service token, or a reader's account) |
| GET /studies/{uid}/verdicts | any token | the latest analysis's judgeable findings with the current verdicts, and the history |
| POST /studies/{uid}/verdicts | a reader's account (403 for a service token) | one verdict: `{"finding", "verdict", "corrected_volume_ml"?, "note"?, "job_id"?}` |
| GET /studies/{uid}/verdicts.json | any token | the study's verdicts, history included, as a JSON download |
| GET /studies/{uid}/verdicts.dcm | any token | the current verdicts as a Comprehensive SR (application/dicom), dicom_out.verdict_sr: the one stored to the archive once it has been |
| GET /verdicts/export | any token | every verdict made in [since, until) (dates or ISO times, UTC), JSON |
| GET /verdicts/agreement | any token | agreement per time bucket (`by=day|week|month`), finding type and backend version |
| GET /agreement | none (the page; it calls the above with the token) | the agreement page |

Every verdict written is audited (Patient Record, node.audit) with the reader's account
name; every export too (Export). Notes are never logged nor audited. The verdict SR is made
from the AI SR and SEG of each judged analysis as the worker wrote them (data/results/...);
once the readers have finished, `serve` stores it to the archive through the outbox
(node.verdicts.archive), and the download is then that stored object.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse

from node.http.auth import Principal, principal, require_reader
from node.http.context import ApiContext, check_uid
from node.store import verdicts as store
from node.verdicts import report

if TYPE_CHECKING:
    from node.audit.trail import AuditTrail

log = logging.getLogger("trauma_node.http")

BODY_FIELDS = ("finding", "verdict", "corrected_volume_ml", "note", "job_id")


def parse_when(value: str | None, name: str) -> dt.datetime | None:
    """A date (YYYY-MM-DD) or ISO date-time, as naive UTC; None for none."""
    if value is None or value == "":
        return None
    try:
        when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(422, f"{name}: a date (YYYY-MM-DD) or ISO date-time, not "
                                 f"{value[:40]!r}") from None
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return when


def _verdict_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        raise HTTPException(422, 'body: not valid JSON: send {"finding": "...", "verdict": '
                                 '"accepted|rejected|corrected"}') from None
    if not isinstance(body, dict):
        raise HTTPException(422, 'body: expected a JSON object such as {"finding": "hemorrhage", '
                                 '"verdict": "accepted"}')
    unknown = sorted(set(body) - set(BODY_FIELDS))
    if unknown:
        raise HTTPException(422, f"unknown field(s) {', '.join(unknown)[:200]} (allowed: "
                                 f"{', '.join(BODY_FIELDS)})")
    for field in ("finding", "verdict"):
        if not isinstance(body.get(field), str) or not body[field].strip():
            raise HTTPException(422, f"{field}: required, a string")
    volume = body.get("corrected_volume_ml")
    if volume is not None and (isinstance(volume, bool) or not isinstance(volume, (int, float))
                               or not math.isfinite(volume)):
        raise HTTPException(422, "corrected_volume_ml: a number of mL")
    if body.get("note") is not None and not isinstance(body["note"], str):
        raise HTTPException(422, "note: a string")
    job = body.get("job_id")
    if job is not None and (isinstance(job, bool) or not isinstance(job, int)):
        raise HTTPException(422, "job_id: an integer (the job whose findings were judged)")
    return body


def ai_objects(ctx: ApiContext, job_id: int) -> tuple[Any, Any] | None:
    """(AI SR header, AI SEG header or None) of a job (node.verdicts.report.ai_objects)."""
    return report.ai_objects(ctx.settings, ctx.index, job_id)


def verdict_sr_bytes(ctx: ApiContext, study_uid: str) -> tuple[bytes, list[dict]]:
    """The verdict SR of a study's current verdicts (node.verdicts.report: the one stored to
    the archive when it has been), and the verdicts it holds."""
    try:
        return report.study_sr(ctx.settings, ctx.index, study_uid)
    except report.NoVerdictSR as exc:
        raise HTTPException(exc.status, str(exc)) from None


def router(ctx: ApiContext, audit: AuditTrail | None = None) -> APIRouter:
    api = APIRouter(tags=["verdicts"])
    index = ctx.index

    def host_of(request: Request) -> str:
        return request.client.host if request.client else ""

    async def audit_export(request: Request, who: Principal, study_uids: list[str],
                           what: str) -> None:
        if audit is not None and study_uids:
            await anyio.to_thread.run_sync(lambda: audit.exported(
                sorted(set(study_uids)), who.name, host_of(request), what))

    @api.get("/me", dependencies=[ctx.auth])
    def me(who: Principal = Depends(principal)) -> dict[str, Any]:
        """Who the token belongs to: a reader's account or a service token."""
        return who.public()

    @api.get("/studies/{study_uid}/verdicts", dependencies=ctx.study_access)
    def study_verdicts(study_uid: str, who: Principal = Depends(principal)) -> dict[str, Any]:
        """The study's latest analysis: each finding a reader can judge, with the current
        verdicts on it (``mine``: the asking reader's), and every verdict (history)."""
        ctx.study_pk_or_404(study_uid)
        return store.study_view(index, study_uid, who.name if who.is_person else None)

    @api.post("/studies/{study_uid}/verdicts", status_code=201, dependencies=[ctx.auth])
    async def add_verdict(study_uid: str, request: Request,
                          who: Principal = Depends(require_reader)) -> dict[str, Any]:
        """One verdict of the signed-in reader on one finding: ``{"finding": "organ/spleen",
        "verdict": "accepted" | "rejected" | "corrected", "corrected_volume_ml": 40.5,
        "note": "...", "job_id": 12}`` (job_id: the analysis judged; 409 when a newer one
        replaced it). It supersedes the reader's earlier verdict on that finding."""
        check_uid(study_uid)
        body = _verdict_body(await request.body())
        await anyio.to_thread.run_sync(ctx.study_pk_or_404, study_uid)
        try:
            saved = await anyio.to_thread.run_sync(lambda: store.record(
                index, study_uid, body["finding"].strip(), body["verdict"].strip(),
                who.account_id, body.get("corrected_volume_ml"), body.get("note"),
                body.get("job_id")))
        except store.VerdictError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        log.info("verdict %d on study %s: %s %s by %s", saved["id"], study_uid,
                 saved["finding_key"], saved["verdict"], who.name)
        if audit is not None:
            await anyio.to_thread.run_sync(lambda: audit.verdict(
                study_uid, who.name, host_of(request), saved["finding_key"], saved["verdict"],
                bool(saved["superseded"])))
        return saved

    @api.get("/studies/{study_uid}/verdicts.json", dependencies=[ctx.auth])
    async def study_export(study_uid: str, request: Request,
                           who: Principal = Depends(principal)) -> JSONResponse:
        """The study's verdicts, history included (``current``), as a JSON download."""
        await anyio.to_thread.run_sync(ctx.study_pk_or_404, study_uid)
        rows = await anyio.to_thread.run_sync(lambda: store.export(index, study_uid=study_uid))
        await audit_export(request, who, [study_uid], f"GET {request.url.path}")
        return JSONResponse(_export_document(rows, who, {"study_uid": study_uid}), headers={
            "Content-Disposition": f'attachment; filename="verdicts-{study_uid}.json"'})

    @api.get("/studies/{study_uid}/verdicts.dcm", dependencies=[ctx.auth])
    async def study_sr(study_uid: str, request: Request,
                       who: Principal = Depends(principal)) -> Response:
        """The study's current verdicts as a DICOM Comprehensive SR that references the AI
        SR and SEG it judged (IHE AI Results Assessment in spirit): application/dicom."""
        await anyio.to_thread.run_sync(ctx.study_pk_or_404, study_uid)
        data, included = await anyio.to_thread.run_sync(verdict_sr_bytes, ctx, study_uid)
        await audit_export(request, who, [study_uid], f"GET {request.url.path}")
        return Response(data, media_type="application/dicom", headers={
            "Content-Disposition": f'attachment; filename="verdicts-{study_uid}.dcm"',
            "X-Verdicts": str(len(included))})

    @api.get("/verdicts/export", dependencies=[ctx.auth])
    async def export_all(request: Request, since: str | None = None, until: str | None = None,
                         who: Principal = Depends(principal)) -> JSONResponse:
        """Every verdict made in [since, until) (YYYY-MM-DD or ISO date-times; UTC), history
        included (``current`` says which stand), oldest first."""
        start, end = parse_when(since, "since"), parse_when(until, "until")
        rows = await anyio.to_thread.run_sync(lambda: store.export(index, start, end))
        await audit_export(request, who, [r["study_uid"] for r in rows],
                           f"GET {request.url.path}")
        return JSONResponse(_export_document(rows, who, {"since": since, "until": until}),
                            headers={"Content-Disposition": 'attachment; filename="verdicts.json"'})

    @api.get("/verdicts/agreement", dependencies=[ctx.auth])
    def agreement(by: str = Query("week"), since: str | None = None,
                  until: str | None = None) -> dict[str, Any]:
        """Agreement of the node with its readers per time bucket, finding type and backend
        version: accepted / judged (a correction is a disagreement), with the mean absolute
        volume difference of the corrections."""
        try:
            return store.agreement(index, by, parse_when(since, "since"),
                                   parse_when(until, "until"))
        except store.VerdictError as exc:
            raise HTTPException(exc.status, str(exc)) from None

    return api


def _export_document(rows: list[dict], who: Principal, scope: dict) -> dict[str, Any]:
    return {"exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            .replace("+00:00", "Z"), "exported_by": who.name, **scope,
            "research_use": "RESEARCH USE ONLY: readers' verdicts on AI-generated results",
            "count": len(rows), "verdicts": rows}
