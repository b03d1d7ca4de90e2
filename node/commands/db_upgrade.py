"""`trauma-node db upgrade`: bring the node's database to this code's schema revision
(node.store.schema), and what `serve`, `worker` and the other commands say when it is older."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Callable

from sqlalchemy.engine import make_url

from node.config import load_settings
from node.store.schema import SchemaError, SchemaOutdated


def upgrade_command(args: argparse.Namespace) -> str:
    """The upgrade command for the database the command in args opened."""
    words = ["trauma-node", "db", "upgrade"]
    for option in ("config", "data_dir"):
        value = getattr(args, option, None)
        if value:
            words += [f"--{option.replace('_', '-')}", value]
    return shlex.join(words)


def explain(exc: SchemaError, args: argparse.Namespace) -> str:
    if isinstance(exc, SchemaOutdated):
        return f"{exc}:\n  {upgrade_command(args)}"
    return str(exc)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from node.store import schema

    settings = load_settings(args.config, overrides={"node.data_dir": args.data_dir})
    url = make_url(settings.database_url)
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" \
            and not Path(url.database).exists():
        print(f"db upgrade: no database at {url.database}: check --data-dir and --config "
              "(serve creates a new one at the newest revision)", file=sys.stderr)
        return 1
    before, after = schema.upgrade(settings.database_url)
    if before == after:
        print(f"database {shown}: already at schema revision {after}")
    else:
        was = "empty" if before is None else f"revision {before}"
        print(f"database {shown}: upgraded from {was} to revision {after}")
    return 0


def add_parser(sub: argparse._SubParsersAction,
               with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    db = sub.add_parser("db", help="the node's database: `db upgrade` after installing a newer "
                                   "trauma-node")
    actions = db.add_subparsers(dest="db_command", required=True)
    upgrade = with_config(actions.add_parser(
        "upgrade", help="bring the database to this trauma-node's schema (stop the node and "
                        "its workers first; back the database up)"))
    upgrade.set_defaults(func=cmd_db_upgrade)


__all__ = ["add_parser", "cmd_db_upgrade", "explain", "upgrade_command"]
