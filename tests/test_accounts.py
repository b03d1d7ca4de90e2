"""Reader accounts (node.store.readers, `trauma-node users`): a token per person, only its
hash stored, shown once; a disabled account and a rotated-out token are refused; the HTTP
API knows who made a request, and the shared service tokens keep working."""

from __future__ import annotations

import hashlib
import sqlite3

import httpx
import pytest

from support.nodes import AUTH
from support.verdict_support import AuditedApi

from node.cli import main
from node.store import readers
from node.store.database import Index


@pytest.fixture
def index(tmp_path):
    idx = Index(f"sqlite:///{tmp_path / 'index.sqlite'}")
    yield idx
    idx.close()


def test_only_the_hash_of_a_token_is_stored(index, tmp_path):
    account, token = readers.add(index, "alice", "Dr Alice Example")
    assert token.startswith("tnr_") and len(token) >= 40
    assert readers.by_token(index, token).name == "alice"
    with sqlite3.connect(tmp_path / "index.sqlite") as db:
        rows = db.execute("SELECT * FROM readers").fetchall()
        dump = "\n".join(db.iterdump())
    assert token not in dump and token[4:] not in dump
    assert hashlib.sha256(token.encode()).hexdigest() in str(rows)
    assert "token" not in str(account.public()).replace("token_created_at", "")


def test_names_roles_and_duplicates_are_checked(index):
    readers.add(index, "bob.smith-2")
    for bad in ("Bob", "has space", "", "-x", "api_token", "token-1", "a" * 65):
        with pytest.raises(readers.AccountError):
            readers.add(index, bad)
    with pytest.raises(readers.AccountError, match="exists already"):
        readers.add(index, "bob.smith-2")
    with pytest.raises(readers.AccountError, match="role"):
        readers.add(index, "carol", role="root")
    with pytest.raises(readers.AccountError, match="no account"):
        readers.rotate(index, "nobody")


def test_a_rotated_token_replaces_the_old_and_a_disabled_account_is_refused(tmp_path):
    with AuditedApi(tmp_path / "data") as api, httpx.Client(base_url=api.url) as client:
        _, old = readers.add(api.index, "alice", "Dr Alice Example")
        me = client.get("/me", headers={"Authorization": f"Bearer {old}"})
        assert me.status_code == 200
        assert me.json() == {"name": "alice", "kind": "reader",
                             "display_name": "Dr Alice Example", "role": "reader"}
        # the shared service token still works, and is known as one
        assert client.get("/me", headers=AUTH).json()["kind"] == "service"
        assert client.get("/studies", headers=AUTH).status_code == 200

        _, new = readers.rotate(api.index, "alice")
        assert new != old
        refused = client.get("/studies", headers={"Authorization": f"Bearer {old}"})
        assert refused.status_code == 401 and refused.json()["detail"] == "invalid bearer token"
        assert client.get("/studies", headers={"Authorization": f"Bearer {new}"}).status_code == 200

        readers.set_disabled(api.index, "alice", True)
        disabled = client.get("/me", headers={"Authorization": f"Bearer {new}"})
        assert disabled.status_code == 401 and disabled.json()["detail"] == "account disabled"
        assert "invalid_token" in disabled.headers["www-authenticate"]
        # a request with a body is refused before its body is read, as for any bad token
        posted = client.post("/studies/1.2.3/verdicts", headers={"Authorization": f"Bearer {new}"},
                             json={"finding": "hemorrhage", "verdict": "accepted"})
        assert posted.status_code == 401
        readers.set_disabled(api.index, "alice", False)
        assert client.get("/me", headers={"Authorization": f"Bearer {new}"}).status_code == 200
        assert client.get("/me").status_code == 401
        refusals = [line for line in api.audit_lines() if 'csd-code="110114"' in line]
        assert any("account disabled" in line for line in refusals)
        assert all(old not in line and new not in line for line in api.audit_lines())


def test_the_users_command(tmp_path, capsys):
    config = tmp_path / "node.toml"
    config.write_text("")
    where = ["--config", str(config), "--data-dir", str(tmp_path / "data")]
    assert main(["users", "add", "alice", "--display", "Dr Alice Example", *where]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert token.startswith("tnr_")
    assert main(["users", "add", "alice", *where]) == 1
    assert "exists already" in capsys.readouterr().err
    assert main(["users", "add", "bob", "--role", "admin", *where]) == 0
    capsys.readouterr()
    assert main(["users", "token", "alice", *where]) == 0
    rotated = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["users", "disable", "bob", *where]) == 0
    assert main(["users", "list", *where]) == 0
    listing = capsys.readouterr().out
    assert "alice" in listing and "Dr Alice Example" in listing and "disabled" in listing
    assert token not in listing and rotated not in listing
    assert main(["users", "disable", "nobody", *where]) == 1
    index = Index(f"sqlite:///{tmp_path / 'data' / 'index.sqlite'}")
    try:
        assert readers.by_token(index, token) is None
        assert readers.by_token(index, rotated).name == "alice"
        assert readers.get(index, "bob").disabled and readers.get(index, "bob").role == "admin"
    finally:
        index.close()
    audit = (tmp_path / "data" / "audit" / "audit.log").read_text()
    assert audit.count('csd-code="110137"') == 4  # add alice, add bob, token alice, disable bob
    assert token not in audit and rotated not in audit
