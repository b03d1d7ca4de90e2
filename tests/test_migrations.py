"""Schema migrations: a database made by the last release (0.1.0, commit 2ca9700; the
project has no tags) is upgraded by `trauma-node db upgrade` on SQLite and PostgreSQL
with nothing lost, and `serve` and `worker` refuse it until then, saying what to run.

The release's database is made by the release's own code (`git archive 2ca9700`, its
create_all in a subprocess), not by our migrations, so that the test would see a
migration that does not match what sites really have.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, create_engine, inspect, select, text

from support.nodes import ROOT, free_port
from support.postgres import PostgresServer

from node.store import conversations, outbox, schema, status
from node.cli import main
from node.store.database import Index, Job, Series
from node.store.tables import Base, OutboxItem

RELEASE = "2ca9700"
NEW_COLUMNS = {"outbox": "attempt_started_at", "series": "incomplete_reason",
               "jobs": "incomplete_reason"}
WHEN = dt.datetime(2025, 3, 4, 5, 6, 7)
# What a node that ran the release holds: two studies, a series analysed twice (its
# second version's results pending), one skipped, one receiving; a conversation.
ROWS = {
    "studies": [
        {"id": 1, "study_uid": "1.2.826.0.1.1", "created_at": WHEN},
        {"id": 2, "study_uid": "1.2.826.0.1.2", "created_at": WHEN},
    ],
    "series": [
        {"id": 1, "study_id": 1, "series_uid": "1.2.826.0.1.1.1", "modality": "CT",
         "state": "queued", "version": 2, "instance_count": 3, "expected_count": 3,
         "first_received_at": WHEN, "last_activity": 1741064767.5, "completed_at": WHEN,
         "skip_reason": None},
        {"id": 2, "study_id": 1, "series_uid": "1.2.826.0.1.1.2", "modality": "CT",
         "state": "skipped", "version": 1, "instance_count": 1, "expected_count": None,
         "first_received_at": WHEN, "last_activity": 1741064767.0, "completed_at": WHEN,
         "skip_reason": "a scout (localizer), not an axial series"},
        {"id": 3, "study_id": 2, "series_uid": "1.2.826.0.1.2.1", "modality": "CT",
         "state": "receiving", "version": 1, "instance_count": 1, "expected_count": None,
         "first_received_at": WHEN, "last_activity": 1741064768.25, "completed_at": None,
         "skip_reason": None},
    ],
    "instances": [
        {"id": i, "series_id": series, "sop_instance_uid": f"1.2.826.0.1.9.{i}",
         "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
         "transfer_syntax_uid": "1.2.840.10008.1.2.1", "path": f"s/{series}/{i}.dcm",
         "size_bytes": 525_000 + i, "series_version": version, "calling_ae": "CT1",
         "geometry": {"position": [0.0, 0.0, -2.5 * i], "spacing": [0.7, 0.7]},
         "received_at": WHEN}
        for i, series, version in [(1, 1, 1), (2, 1, 1), (3, 1, 2), (4, 2, 1), (5, 3, 1)]
    ],
    "jobs": [
        {"id": 1, "series_id": 1, "series_version": 1, "state": "done", "attempts": 1,
         "worker": "host/serve-1", "created_at": WHEN, "started_at": WHEN,
         "finished_at": WHEN, "error": None,
         "result": {"dir": "results/1/1/v1", "risk_tier": "moderate", "volume_ml": 61.0}},
        {"id": 2, "series_id": 1, "series_version": 2, "state": "done", "attempts": 1,
         "worker": "host/serve-1", "created_at": WHEN, "started_at": WHEN,
         "finished_at": WHEN, "error": None, "result": {"dir": "results/1/1/v2"}},
    ],
    "workers": [
        {"name": "host/serve-1", "pid": 4242, "started_at": WHEN, "last_seen": WHEN},
    ],
    "outbox": [
        {"id": i, "study_uid": "1.2.826.0.1.1", "series_uid": "1.2.826.0.1.1.1",
         "series_version": version, "kind": kind, "sop_instance_uid": f"1.2.826.0.1.8.{i}",
         "path": f"/data/results/v{version}/{kind}.dcm", "destination": "pacs",
         "state": state, "attempts": attempts, "next_attempt_at": 0.0,
         "last_error": error, "created_at": WHEN, "sent_at": WHEN if state == "sent" else None}
        for i, version, kind, state, attempts, error in [
            (1, 1, "seg", "sent", 1, None), (2, 1, "sr", "dead", 10, "association rejected"),
            (3, 2, "seg", "pending", 0, None), (4, 2, "sr", "pending", 2, "timeout")]
    ],
    "qa_messages": [
        {"id": 1, "study_id": 1, "role": "question", "text": "Is there free fluid?",
         "question_id": None, "state": "complete", "hemodynamic_status": "stable",
         "answerer": None, "job_id": None, "created_at": WHEN},
        {"id": 2, "study_id": 1, "role": "answer", "text": "Yes: 61 mL, perisplenic.",
         "question_id": 1, "state": "complete", "hemodynamic_status": None,
         "answerer": "grounded", "job_id": 2, "created_at": WHEN},
    ],
}


@pytest.fixture(scope="module")
def release_code(tmp_path_factory) -> Path:
    """The release's node/ and pipeline/, from git."""
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{RELEASE}^{{commit}}"],
                           capture_output=True)
    # Not a skip: without that commit the upgrade from the release would go untested.
    assert known.returncode == 0, (
        f"the last release's commit {RELEASE} is not in this clone's history; this test builds "
        "the release's database with that release's own code: fetch it (git fetch --unshallow)")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", RELEASE, "node", "pipeline"],
                             capture_output=True, check=True, timeout=60).stdout
    root = tmp_path_factory.mktemp("release")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    return root


def make_release_database(code: Path, url: str) -> None:
    """The tables as the release's `serve` created them: its create_all, every module that
    declares a table imported."""
    script = ("import sys, node, node.outbox, node.conversations\n"
              "assert node.__file__.startswith(sys.argv[2]), node.__file__\n"
              "from node.index import Index\n"
              "Index(sys.argv[1]).close()\n")
    env = {**os.environ, "PYTHONPATH": str(code)}
    subprocess.run([sys.executable, "-c", script, url, str(code)], cwd=code, env=env,
                   check=True, timeout=120, capture_output=True)


def fill(url: str) -> None:
    engine = create_engine(url)
    tables = MetaData()
    tables.reflect(engine)
    with engine.begin() as conn:
        for name, rows in ROWS.items():  # parents first
            conn.execute(tables.tables[name].insert(), rows)
        if engine.dialect.name == "postgresql":  # as if the ids had come from the sequences
            for name in ROWS:
                if name != "workers":
                    conn.execute(text(f"SELECT setval('{name}_id_seq', (SELECT max(id) "
                                      f"FROM {name}))"))
    engine.dispose()


def rows_of(url: str) -> dict[str, list[dict]]:
    """Every row of the release's columns, by table."""
    engine = create_engine(url)
    tables = MetaData()
    tables.reflect(engine)
    found = {}
    with engine.connect() as conn:
        for name, rows in ROWS.items():
            table = tables.tables[name]
            columns = [table.c[c] for c in rows[0]]
            found[name] = [dict(r._mapping) for r in conn.execute(
                select(*columns).order_by(*table.primary_key.columns))]
    engine.dispose()
    return found


def shape_of(url: str) -> dict[str, dict]:
    """The schema as the database reports it: columns, keys, indexes, unique constraints."""
    engine = create_engine(url)
    inspector = inspect(engine)
    shape = {}
    for name in inspector.get_table_names():
        shape[name] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"])
                        for c in inspector.get_columns(name)],
            "primary_key": inspector.get_pk_constraint(name)["constrained_columns"],
            "foreign_keys": sorted((tuple(f["constrained_columns"]), f["referred_table"],
                                    (f.get("options") or {}).get("ondelete"))
                                   for f in inspector.get_foreign_keys(name)),
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                              for i in inspector.get_indexes(name)),
            "unique": sorted(tuple(u["column_names"])
                             for u in inspector.get_unique_constraints(name)),
        }
    engine.dispose()
    return shape


def differences_from_code(url: str) -> list:
    engine = create_engine(url)
    with engine.connect() as conn:
        found = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                 Base.metadata)
    engine.dispose()
    return found


def upgrade_to(url: str, revision: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(schema.alembic_config(conn), revision)
    engine.dispose()


@pytest.fixture(scope="module")
def postgres():
    with PostgresServer() as server:
        yield server


def new_database(kind: str, tmp_path: Path, name: str, request) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / f'{name}.sqlite'}"
    server = request.getfixturevalue("postgres")
    admin = create_engine(server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_first_migration_is_the_schema_of_the_last_release(kind, release_code, tmp_path,
                                                                 request):
    released = new_database(kind, tmp_path, "released", request)
    make_release_database(release_code, released)
    migrated = new_database(kind, tmp_path, "migrated", request)
    upgrade_to(migrated, "0001")
    shape = shape_of(migrated)
    assert shape.pop("alembic_version")
    assert shape == shape_of(released)
    # and a new database, made at the newest revision, is what the migrations make
    fresh = new_database(kind, tmp_path, "fresh", request)
    Index(fresh).close()
    upgrade_to(migrated, "head")
    assert shape_of(migrated) == shape_of(fresh) != {}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_database_of_the_last_release_is_upgraded_with_nothing_lost(kind, release_code,
                                                                      tmp_path, request):
    url = new_database(kind, tmp_path, "trauma_node", request)
    make_release_database(release_code, url)
    fill(url)
    before = rows_of(url)
    assert before == ROWS

    with pytest.raises(schema.SchemaOutdated, match="without migrations.*needs revision"):
        Index(url)
    assert rows_of(url) == before  # refusing changed nothing

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = tmp_path / "node.toml"
    if kind == "sqlite":
        (data_dir / "index.sqlite").write_bytes(Path(url.split("///", 1)[1]).read_bytes())
        url = f"sqlite:///{data_dir / 'index.sqlite'}"
        config.write_text("")
    else:
        config.write_text(f'[storage]\ndatabase_url = "{url}"\n')
    args = ["db", "upgrade", "--config", str(config), "--data-dir", str(data_dir)]
    assert main(args) == 0
    assert main(args) == 0  # a second upgrade finds nothing to do

    assert rows_of(url) == before
    assert differences_from_code(url) == []
    engine = create_engine(url)
    with engine.connect() as conn:
        assert schema.revision(conn) == schema.head()
        for table, column in NEW_COLUMNS.items():
            assert set(conn.execute(text(f"SELECT {column} FROM {table}")).scalars()) == {None}
    engine.dispose()

    # The node's code works on it: the new columns and the withdrawn state (9 characters,
    # which the release's outbox.state, VARCHAR(8), refused on PostgreSQL).
    index = Index(url)
    try:
        outbox.mark_started(index, 4)
        with index.engine.begin() as conn:
            assert outbox.withdraw(conn, "1.2.826.0.1.1.1", 2) == 2
        with index.session() as session, session.begin():
            session.get(Series, 1).incomplete_reason = "association aborted by the sender"
            session.get(Job, 2).incomplete_reason = "association aborted by the sender"
        with index.session() as session:
            assert session.get(Series, 1).incomplete_reason.startswith("association aborted")
            assert session.get(Job, 2).incomplete_reason.startswith("association aborted")
        with index.session() as session:
            states = {row.id: (row.state, row.attempt_started_at is not None)
                      for row in session.execute(select(OutboxItem)).scalars()}
        assert states == {1: ("sent", False), 2: ("dead", False), 3: ("withdrawn", False),
                          4: ("withdrawn", True)}
        shown = status.studies(index)
        assert {s["study_uid"] for s in shown} == {"1.2.826.0.1.1", "1.2.826.0.1.2"}
        assert [t.question for t in conversations.history(index, 1)] == ["Is there free fluid?"]
        # new rows take the next ids
        outbox.enqueue(index, [{"study_uid": "1.2.826.0.1.2", "series_uid": "1.2.826.0.1.2.1",
                                "series_version": 1, "kind": "seg", "path": "/x/seg.dcm",
                                "sop_instance_uid": "1.2.826.0.1.8.5", "destination": "pacs"}])
        assert len(outbox.items_for_study(index, "1.2.826.0.1.2")) == 1
    finally:
        index.close()


def test_serve_and_worker_refuse_an_older_database_and_say_what_to_run(release_code, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    make_release_database(release_code, f"sqlite:///{data_dir / 'index.sqlite'}")
    config = tmp_path / "node.toml"
    config.write_text("")
    node = [sys.executable, "-m", "node.cli"]
    options = ["--config", str(config), "--data-dir", str(data_dir)]
    expected = shlex.join(["trauma-node", "db", "upgrade", *options])
    for command_line in (["serve", *options, "--dicom-port", str(free_port()),
                          "--http-port", str(free_port())],
                         ["worker", *options, "--count", "1"]):
        run = subprocess.run([*node, *command_line], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 2, run.stderr
        assert "made by trauma-node 0.1.0" in run.stderr and "back it up" in run.stderr
        assert run.stderr.strip().splitlines()[-1].strip() == expected, run.stderr
    assert not (data_dir / "api_token").exists()  # serve stopped before its HTTP API

    upgrade = subprocess.run([*node, *shlex.split(expected)[1:]], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert upgrade.returncode == 0, upgrade.stderr
    assert f"to revision {schema.head()}" in upgrade.stdout
    after = subprocess.run([*node, "status", *options], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert after.returncode == 0, after.stderr


def test_a_database_at_an_older_or_unknown_revision_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    upgrade_to(url, "0001")
    with pytest.raises(schema.SchemaOutdated, match="is at schema revision 0001"):
        Index(url)
    assert schema.upgrade(url) == ("0001", schema.head())
    Index(url).close()

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(schema.SchemaTooNew, match="upgraded by a newer trauma-node"):
        Index(url)
    with pytest.raises(schema.SchemaTooNew):
        schema.upgrade(url)


def test_the_migrations_ship_inside_the_package():
    import tomllib

    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["node.store"]
    shipped = {p.relative_to(ROOT / "node" / "store").as_posix()
               for pattern in package_data for p in (ROOT / "node" / "store").glob(pattern)}
    needed = {p.relative_to(ROOT / "node" / "store").as_posix()
              for p in schema.MIGRATIONS.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert needed and needed <= shipped, needed - shipped


def test_a_database_made_between_the_release_and_the_migrations_is_upgraded(release_code,
                                                                             tmp_path):
    """Until the migrations, an interim hook added the new columns to older databases
    (ALTER TABLE ... ADD COLUMN), without a revision: 0002 leaves them as they are."""
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    make_release_database(release_code, url)
    fill(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        for table, column in NEW_COLUMNS.items():
            sql_type = "FLOAT" if column == "attempt_started_at" else "TEXT"
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))
        conn.execute(text("UPDATE series SET incomplete_reason = 'node stopped' WHERE id = 3"))
    engine.dispose()
    with pytest.raises(schema.SchemaOutdated):
        Index(url)
    assert schema.upgrade(url) == (schema.BEFORE_MIGRATIONS, schema.head())
    assert rows_of(url) == ROWS and differences_from_code(url) == []
    index = Index(url)
    try:
        with index.session() as session:
            assert session.get(Series, 3).incomplete_reason == "node stopped"
    finally:
        index.close()
