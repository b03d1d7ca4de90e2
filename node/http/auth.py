"""Bearer tokens for the HTTP API, checked before any request body is read.

Tokens come from ``api.tokens`` in the config file or ``TRAUMA_NODE_API_TOKENS``
(comma-separated). With none configured, the first start generates one and
stores it in the data directory (``api_token``, mode 0600); later starts read it
back. Only the file's path is ever logged or printed, never a token; the audit trail
names a token by where it comes from (Tokens.names), never by its value.

These are service tokens (scripts, the PACS side). People sign in with their own account's
token (node.store.readers: `trauma-node users add`): a bearer token that is no service
token is looked up among the accounts by its SHA-256, and the request knows who made it
(request.state.principal, a Principal); the audit trail names the account. A disabled
account is refused like an unknown token. What only a person may do (a verdict) is
refused with 403 to a service token (require_reader).
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import anyio
from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node.config import Settings

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

    @property
    def names(self) -> list[str]:
        """What the audit trail calls each token: api.tokens[i], or the file's name."""
        if self.source == "config":
            return [f"api.tokens[{i}]" for i in range(len(self.tokens))]
        return [TOKEN_FILE] * len(self.tokens)


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


@dataclass(frozen=True)
class Principal:
    """Who made a request: a service token (kind "service", named as in Tokens.names) or a
    person's account (kind "reader", node.store.readers)."""
    name: str
    kind: str  # service | reader
    display_name: str = ""
    role: str = ""
    account_id: int | None = None

    @property
    def is_person(self) -> bool:
        return self.kind == "reader"

    def public(self) -> dict:
        return {"name": self.name, "kind": self.kind,
                "display_name": self.display_name or self.name, "role": self.role or None}


class BearerAuth:
    """FastAPI dependency: 401 with WWW-Authenticate unless a valid Bearer token is sent."""

    def __init__(self, tokens: list[str], names: list[str] | None = None,
                 on_refused: Callable[[str, str], None] | None = None,
                 accounts: Callable[[str], Any] | None = None):
        """names: what the audit trail calls each token (default token-1, token-2...);
        on_refused(client address, why): called for each request refused (node.audit.trail);
        accounts(token): the account (node.store.readers.Account) holding a token, or None."""
        if not tokens:
            raise ValueError("at least one API token is needed")
        self._tokens = [t.encode() for t in tokens]
        self._names = names or [f"token-{i + 1}" for i in range(len(tokens))]
        self.on_refused = on_refused
        self.accounts = accounts

    def _lookup(self, authorization: str | None) -> tuple[Principal | None, str]:
        """(who, why not): the principal of a valid, enabled token, else None and why."""
        scheme, _, given = (authorization or "").partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            return None, "missing"
        found = None
        for token, name in zip(self._tokens, self._names):  # every token: no early exit
            if hmac.compare_digest(given.encode(), token):
                found = name
        if found is not None:
            return Principal(found, "service"), ""
        account = self.accounts(given) if self.accounts is not None else None
        if account is None:
            return None, "invalid"
        if account.disabled:
            return None, "disabled"
        return Principal(account.name, "reader", account.display_name, account.role,
                         account.id), ""

    def principal_of(self, authorization: str | None) -> Principal | None:
        return self._lookup(authorization)[0]

    def name_of(self, authorization: str | None) -> str | None:
        """The name of the valid token an Authorization header holds (a service token's
        name, or the account's), else None."""
        principal = self.principal_of(authorization)
        return principal.name if principal is not None else None

    def refusal(self, authorization: str | None, client: str = "") -> HTTPException | None:
        """The 401 for an Authorization header's value; None when it holds a valid token."""
        return self._refusal(*self._lookup(authorization), client)

    def _refusal(self, principal: Principal | None, why: str,
                 client: str) -> HTTPException | None:
        if why == "missing":
            refusal = HTTPException(401, "missing bearer token: send 'Authorization: Bearer "
                                    "<token>'", headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'})
        elif principal is None:
            refusal = HTTPException(
                401, "account disabled" if why == "disabled" else "invalid bearer token",
                headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'})
        else:
            return None
        if self.on_refused is not None:
            self.on_refused(client, str(refusal.detail))
        return refusal

    async def __call__(self, request: Request,
                       _credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)
                       ) -> None:
        header = request.headers.get("authorization")
        # An account's token is looked up in the database: not on the event loop.
        found, why = (self._lookup(header) if self.accounts is None
                      else await anyio.to_thread.run_sync(self._lookup, header))
        refusal = self._refusal(found, why, request.client.host if request.client else "")
        if refusal is not None:
            raise refusal
        request.state.principal = found


def principal(request: Request) -> Principal:
    """Who made the request (set by BearerAuth, which runs first)."""
    found = getattr(request.state, "principal", None)
    if found is None:
        raise HTTPException(401, "missing bearer token: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'})
    return found


def require_reader(request: Request) -> Principal:
    """A person's account, for what only a person may do: 403 for a service token."""
    found = principal(request)
    if not found.is_person:
        raise HTTPException(403, "a verdict needs a reader's own account: sign in with the "
                                 "token of `trauma-node users add NAME`, not a service token")
    return found


class TokenBeforeBody:
    """ASGI middleware: a request with a body is answered 401 unless it carries a valid
    token, and 413 when its body is larger than max_bytes, before its body is read.

    FastAPI reads and validates a request's body before the route's dependencies run, the
    token check among them: without this, anyone could make the node read (and keep) any
    amount. Both answers close the connection, so that the rest is never read either."""

    def __init__(self, app: ASGIApp, auth: BearerAuth, max_bytes: int):
        self.app, self.auth, self.max_bytes = app, auth, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        length = headers.get("content-length") if headers else None
        chunked = bool(headers) and "chunked" in headers.get("transfer-encoding", "").lower()
        if headers is None or (not chunked and length in (None, "0")):
            return await self.app(scope, receive, send)  # no body
        client = scope.get("client") or ("",)
        refusal = (self.auth.refusal(headers.get("authorization"), str(client[0]))
                   if self.auth.accounts is None else  # a reader's token: a database look-up
                   await anyio.to_thread.run_sync(self.auth.refusal, headers.get("authorization"),
                                                  str(client[0])))
        if refusal is None and length is not None and (
                not length.isdigit() or int(length) > self.max_bytes):
            refusal = self._too_large()
        if refusal is not None:
            response = JSONResponse({"detail": refusal.detail}, refusal.status_code,
                                    headers={**(refusal.headers or {}), "Connection": "close"})
            return await response(scope, receive, send)
        received = 0

        async def receive_at_most() -> Message:  # a chunked body states no length
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._too_large()  # FastAPI answers an HTTPException it meets here
            return message

        await self.app(scope, receive_at_most, send)

    def _too_large(self) -> HTTPException:
        return HTTPException(413, f"request body larger than {self.max_bytes} bytes "
                                  "(api.max_request_bytes)", headers={"Connection": "close"})
