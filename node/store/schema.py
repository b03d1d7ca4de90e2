"""The database's schema revision: checked whenever the node opens its database, brought
to this code's revision by `trauma-node db upgrade` (Alembic, node/migrations/).

A new, empty database is created at the newest revision (so a fresh node needs no extra
step); one at an older revision, or made before the node had migrations (no
alembic_version table), is refused with SchemaOutdated until it is upgraded; one at a
revision this code does not know (made by a newer trauma-node) with SchemaTooNew.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from node.store.tables import Base

log = logging.getLogger("trauma_node.schema")

MIGRATIONS = Path(__file__).with_name("migrations")
# The revision of a database whose tables a trauma-node made before it had migrations.
BEFORE_MIGRATIONS = "before migrations"
# pg_advisory_xact_lock's key: one process at a time creates or upgrades the schema.
_LOCK_KEY = 0x7472_6175  # "trau"


class SchemaError(RuntimeError):
    def __init__(self, message: str, url: str, revision: str | None, head: str):
        super().__init__(message)
        self.url, self.revision, self.head = url, revision, head


class SchemaOutdated(SchemaError):
    """The database is older than the code: `trauma-node db upgrade`."""


class SchemaTooNew(SchemaError):
    """The database was upgraded by a newer trauma-node than this one."""


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The revision this code's tables are at (node.store.tables)."""
    return _scripts().get_current_head()


def revisions() -> list[str]:
    """Every revision, oldest first."""
    return [s.revision for s in reversed(list(_scripts().walk_revisions()))]


def revision(conn: Connection) -> str | None:
    """The database's revision: None for a new, empty one, BEFORE_MIGRATIONS for the
    node's tables without a revision."""
    current = MigrationContext.configure(conn).get_current_revision()
    if current is not None:
        return current
    if set(inspect(conn).get_table_names()) & set(Base.metadata.tables):
        return BEFORE_MIGRATIONS
    return None


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})


def _shown(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _check(url: str, current: str | None) -> None:
    newest = head()
    if current == newest:
        return
    if current == BEFORE_MIGRATIONS or current in revisions():
        what = ("was made by trauma-node 0.1.0 or another version without migrations"
                if current == BEFORE_MIGRATIONS else f"is at schema revision {current}")
        raise SchemaOutdated(
            f"the database {url} {what}; this trauma-node needs revision {newest}. Stop the "
            "nodes and workers that use it, back it up, and upgrade it", url, current, newest)
    raise SchemaTooNew(
        f"the database {url} is at schema revision {current}, which this trauma-node does "
        f"not know (its newest is {newest}): it was upgraded by a newer trauma-node; run "
        "that one", url, current, newest)


def ensure_current(engine: Engine) -> None:
    """Create a new, empty database at the newest revision; raise SchemaOutdated or
    SchemaTooNew for one at another revision."""
    for attempt in (1, 2):
        try:
            with engine.begin() as conn:
                _lock(conn)
                current = revision(conn)
                if current is None:
                    Base.metadata.create_all(conn)
                    MigrationContext.configure(conn).stamp(_scripts(), "head")
                    log.info("new database %s: created at schema revision %s",
                             _shown(engine), head())
                    return
            break
        except DBAPIError:
            if attempt == 2:  # not a process that created it at the same moment
                raise
    _check(_shown(engine), current)


def _migration_engine(url: str) -> Engine:
    """An engine whose transactions hold DDL too: on SQLite, pysqlite's own transaction
    handling is turned off and each one is a BEGIN IMMEDIATE, so an upgrade that fails
    half-way leaves the database as it was."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _no_driver_transactions(dbapi_conn, _record):  # noqa: ANN001
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):  # noqa: ANN001
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    return engine


def upgrade(url: str) -> tuple[str | None, str]:
    """Bring the database at url to the newest revision in one transaction; returns its
    revision before (None: it was empty) and after."""
    engine = _migration_engine(url)
    try:
        with engine.begin() as conn:
            _lock(conn)
            before = revision(conn)
            if before not in (None, BEFORE_MIGRATIONS) and before not in revisions():
                _check(_shown(engine), before)  # SchemaTooNew
            command.upgrade(alembic_config(conn), "head")
            after = revision(conn)
    finally:
        engine.dispose()
    return before, after or head()


__all__ = ["BEFORE_MIGRATIONS", "SchemaError", "SchemaOutdated", "SchemaTooNew",
           "alembic_config", "ensure_current", "head", "revision", "revisions", "upgrade"]
