"""Bearer tokens for the HTTP API.

Tokens come from ``api.tokens`` in the config file or ``TRAUMA_NODE_API_TOKENS``
(comma-separated). With none configured, the first start generates one and
stores it in the data directory (``api_token``, mode 0600); later starts read it
back. Only the file's path is ever logged or printed, never a token.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .config import Settings

log = logging.getLogger("trauma_node.http")

TOKEN_FILE = "api_token"
REALM = "trauma-node"

bearer_scheme = HTTPBearer(auto_error=False, description=(
    "An API token: from api.tokens / TRAUMA_NODE_API_TOKENS, or the one generated in the data "
    "directory (api_token) at first start."))


@dataclass
class Tokens:
    tokens: list[str]
    source: str  # config | file | generated
    path: Path | None = None  # the token file, when the token lives in one


def token_path(settings: Settings) -> Path:
    return settings.data_dir / TOKEN_FILE


def resolve_tokens(settings: Settings) -> Tokens:
    """The configured tokens, else the stored one, else a new one stored with mode 0600."""
    configured = [t.strip() for t in settings.api.tokens if t.strip()]
    if configured:
        return Tokens(configured, "config")
    path = token_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, 0o600)
            log.warning("API token file %s was readable by others (mode %o): set to 0600",
                        path, mode)
        stored = path.read_text().strip()
        if len(stored) < 16:
            raise RuntimeError(f"API token file {path} holds no valid token (at least 16 "
                               "characters): delete it to generate a new one")
        return Tokens([stored], "file", path)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return Tokens([token], "generated", path)


class BearerAuth:
    """FastAPI dependency: 401 with WWW-Authenticate unless a valid Bearer token is sent."""

    def __init__(self, tokens: list[str]):
        if not tokens:
            raise ValueError("at least one API token is needed")
        self._tokens = [t.encode() for t in tokens]

    async def __call__(self, credentials: HTTPAuthorizationCredentials | None
                       = Depends(bearer_scheme)) -> None:
        if credentials is None:
            raise HTTPException(401, "missing bearer token: send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'})
        given = credentials.credentials.encode()
        ok = False
        for token in self._tokens:  # compare with every token: no early exit
            ok |= hmac.compare_digest(given, token)
        if not ok:
            raise HTTPException(401, "invalid bearer token", headers={
                "WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'})
