"""Health, metrics and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from node import __version__, metrics
from node.http.context import ApiContext


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter()

    @api.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        """Liveness; needs no token."""
        return {"status": "ok", "ae_title": ctx.settings.node.ae_title, "version": __version__}

    @api.get("/metrics", tags=["health"], dependencies=[ctx.auth],
             response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text exposition format 0.0.4",
                              "content": {metrics.CONTENT_TYPE: {"schema": {"type": "string"}}}}})
    def prometheus_metrics() -> PlainTextResponse:
        """Prometheus metrics: DICOM associations and C-STORE outcomes since start-up;
        series, jobs, deliveries and questions by state; queue and delivery ages; recent
        job durations; spool free space. No patient data or UIDs."""
        return PlainTextResponse(
            metrics.render(ctx.index, ctx.settings, ctx.live, len(ctx.open_answers)),
            media_type=metrics.CONTENT_TYPE)

    @api.get("/openapi.json", include_in_schema=False, dependencies=[ctx.auth])
    def openapi(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    return api
