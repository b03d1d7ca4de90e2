"""Reader accounts: the people who sign in to the page and judge the findings.

Each account (table `readers`, node.store.tables.Reader) has a name (the login, lower case:
letters, digits, '.', '_', '-'), a display name, a role (``reader``: judges findings;
``admin``: the same, kept apart for administration to come) and at most one token. The
token is 32 random bytes (``secrets.token_urlsafe(32)``, prefixed ``tnr_`` so that people
and secret scanners can tell what it is); only its SHA-256 is stored, so a copy of the
database gives no one a way in. It is shown once, when it is made (``trauma-node users
add`` / ``users token``, which also rotates it: the old one stops working at once).
A disabled account's token is refused; its verdicts stay.

The HTTP API (node.http.auth) looks a bearer token up here when it is none of the
service tokens of ``api.tokens``; a hash is looked up by equality in a unique index, so the
comparison reveals nothing about the token.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select

from node.store.database import Index
from node.store.tables import Reader, utcnow

ROLES = ("reader", "admin")
TOKEN_PREFIX = "tnr_"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# Names the audit trail already gives the service tokens (node.http.auth.Tokens.names).
RESERVED = {"api_token", "unknown", "unauthenticated"}


class AccountError(ValueError):
    """A request about accounts that cannot be done (bad name, unknown, already there)."""


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    display_name: str
    role: str
    created_at: dt.datetime
    disabled_at: dt.datetime | None
    token_created_at: dt.datetime | None

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None

    def public(self) -> dict:
        """What the API and `users list` show: never the token nor its hash."""
        return {"name": self.name, "display_name": self.display_name, "role": self.role,
                "created_at": _iso(self.created_at), "disabled": self.disabled,
                "disabled_at": _iso(self.disabled_at),
                "token_created_at": _iso(self.token_created_at)}


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value is not None else None


def _account(row: Reader) -> Account:
    return Account(row.id, row.name, row.display_name, row.role, row.created_at,
                   row.disabled_at, row.token_created_at)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not _NAME.match(name):
        raise AccountError(f"account name {name[:80]!r}: use 1 to 64 lower-case letters, digits, "
                           "'.', '_' or '-', starting with a letter or digit")
    if name in RESERVED or name.startswith("token-"):
        raise AccountError(f"account name {name!r} is reserved")
    return name


def add(index: Index, name: str, display_name: str | None = None,
        role: str = "reader") -> tuple[Account, str]:
    """A new account and its token (returned once; only its hash is kept)."""
    name = check_name(name)
    if role not in ROLES:
        raise AccountError(f"role {role!r}: one of {', '.join(ROLES)}")
    display = (display_name or name).strip()[:128] or name
    token = new_token()
    with index.session() as session, session.begin():
        if session.execute(select(Reader.id).where(Reader.name == name)).scalar() is not None:
            raise AccountError(f"account {name!r} exists already (new token: "
                               f"trauma-node users token {name})")
        row = Reader(name=name, display_name=display, role=role, token_sha256=token_hash(token),
                     token_created_at=utcnow(), created_at=utcnow())
        session.add(row)
        session.flush()
        return _account(row), token


def rotate(index: Index, name: str) -> tuple[Account, str]:
    """A new token for the account; the old one is refused from now on."""
    token = new_token()
    with index.session() as session, session.begin():
        row = _row(session, name)
        row.token_sha256, row.token_created_at = token_hash(token), utcnow()
        return _account(row), token


def set_disabled(index: Index, name: str, disabled: bool) -> Account:
    with index.session() as session, session.begin():
        row = _row(session, name)
        if disabled and row.disabled_at is None:
            row.disabled_at = utcnow()
        elif not disabled:
            row.disabled_at = None
        return _account(row)


def _row(session, name: str) -> Reader:
    row = session.execute(select(Reader).where(Reader.name == (name or "").strip())).scalar()
    if row is None:
        raise AccountError(f"no account {name[:80]!r} (trauma-node users list)")
    return row


def accounts(index: Index) -> list[Account]:
    with index.session() as session:
        return [_account(r) for r in session.execute(select(Reader).order_by(Reader.name)).scalars()]


def get(index: Index, name: str) -> Account | None:
    with index.session() as session:
        row = session.execute(select(Reader).where(Reader.name == name)).scalar()
        return _account(row) if row is not None else None


def by_token(index: Index, token: str) -> Account | None:
    """The account whose token this is (disabled ones too: the caller refuses them), or None."""
    if not token or len(token) > 512:
        return None
    with index.session() as session:
        row = session.execute(select(Reader).where(Reader.token_sha256 == token_hash(token))).scalar()
        return _account(row) if row is not None else None
