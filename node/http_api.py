"""The node's HTTP API: health and the studies it holds."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from . import __version__, status
from .config import Settings
from .index import Index


def create_app(settings: Settings, index: Index) -> FastAPI:
    app = FastAPI(title="trauma-node", version=__version__,
                  description="DICOM node for abdominal trauma CT (research use only)")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "ae_title": settings.node.ae_title, "version": __version__}

    @app.get("/studies")
    def studies() -> list[dict[str, Any]]:
        """Every study with its series, their states, skip reasons and jobs."""
        return status.studies(index)

    return app
