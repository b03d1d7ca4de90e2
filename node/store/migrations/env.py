"""Alembic's environment for the node's database (node.store.schema runs it).

node.store.schema hands over an open connection in config.attributes["connection"]; the
`alembic` command (for a developer writing a migration: see README.md here) gives a URL
instead, in alembic.ini or with -x url=...
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from node.store.tables import Base


def run(connection) -> None:  # noqa: ANN001
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite alters most things by copying the table (Alembic's batch mode).
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("trauma-node's migrations run against a database (no --sql mode)")

given = context.config.attributes.get("connection")
if given is not None:
    run(given)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or \
        context.config.get_main_option("sqlalchemy.url")
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            run(connection)
    finally:
        engine.dispose()
