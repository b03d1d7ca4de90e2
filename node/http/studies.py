"""The studies: their series and jobs, Findings, report and deliveries."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Response

from node.alerts import store as alert_store
from node.http.context import ApiContext
from node.store import conversations, outbox, status, study_findings


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["studies"])
    index = ctx.index

    @api.get("/studies", dependencies=[ctx.auth])
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

    @api.get("/studies/{study_uid}", dependencies=ctx.study_access)
    def study(study_uid: str) -> dict[str, Any]:
        """One study: its state, series, a summary of its Findings and its deliveries."""
        ctx.study_pk_or_404(study_uid)
        found = study_findings.latest_findings(index, study_uid)
        detail = study_findings.study_detail(index, study_uid, found is not None)
        if detail is None:
            raise HTTPException(404, f"unknown study {study_uid}")
        detail["findings"] = ({**found.meta(), **study_findings.summary(found.findings)}
                              if found else None)
        detail["deliveries"] = outbox.items_for_study(index, study_uid)
        detail["alerts"] = alert_store.alerts_for_study(index, study_uid)
        return detail

    @api.get("/studies/{study_uid}/findings", dependencies=ctx.study_access)
    def findings(study_uid: str) -> dict[str, Any]:
        """The Findings (findings.json, pipeline/README.md) of the latest analysis of the
        study's current series version. 409 while there are none yet."""
        found = ctx.findings_or_409(study_uid)
        return {**found.meta(), "findings": found.findings}

    @api.get("/studies/{study_uid}/report", dependencies=ctx.study_access)
    def report(study_uid: str) -> dict[str, Any]:
        """The report text of the study's Findings."""
        found = ctx.findings_or_409(study_uid)
        return {**found.meta(), "research_use": found.findings.get("research_use"),
                "report": found.findings.get("report", "")}

    @api.get("/studies/{study_uid}/deliveries", dependencies=ctx.study_access)
    def deliveries(study_uid: str) -> dict[str, Any]:
        """Where each result object (SEG, SR) stands with each destination, and each
        critical-result alert with each receiver (node.alerts)."""
        ctx.study_pk_or_404(study_uid)
        return {"study_uid": study_uid, "deliveries": outbox.items_for_study(index, study_uid),
                "alerts": alert_store.alerts_for_study(index, study_uid)}

    return api
