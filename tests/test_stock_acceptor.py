"""Receiving through pynetdicom's stock acceptor, the fallback of node.dicom.acceptor_choice.

node.dicom.fast_acceptor rewrites pynetdicom 3.0.4's internals; with any other pynetdicom the
node must still receive, only slower. The fallback is forced here (node.dicom.acceptor_choice.STOCK_ENV)
and the receive suite's key tests run through it in a pytest of their own.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from pynetdicom.transport import ThreadedAssociationServer

from support.nodes import ROOT
from node.dicom import acceptor_choice as fast_dul

# The receive suite's key tests; not those of what the fallback loses (README): the
# answer to a request with an empty or overlong SOP Instance UID, node.dicom.connections.
KEY_TESTS = [
    "tests/test_receive.py::test_series_from_storescu_is_stored_indexed_and_processed[False]",
    "tests/test_receive.py::test_duplicates_are_stored_once_and_late_instances_make_a_new_"
    "version[sqlite]",
    "tests/test_scp_statuses.py::test_out_of_resources_mid_association_keeps_what_was_received",
    "tests/test_scp_statuses.py::test_bad_data_sets_get_their_failure_status_at_once",
    "tests/test_scp_statuses.py::test_repeated_failures_are_summarised_per_association",
]


def test_fast_dul_touches_no_private_module_of_pynetdicom_before_its_version_check():
    tree = ast.parse((ROOT / "node" / "dicom" / "acceptor_choice.py").read_text())
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [alias.name for node in top_level for alias in node.names] + [
        node.module or "" for node in top_level if isinstance(node, ast.ImportFrom)]
    assert not [n for n in names if n.startswith("pynetdicom._") or "fast_acceptor" in n]
    assert "pynetdicom" in names


def test_another_pynetdicom_version_gets_the_stock_acceptor(monkeypatch, caplog):
    monkeypatch.delenv(fast_dul.STOCK_ENV, raising=False)
    monkeypatch.setattr(fast_dul, "COMPATIBLE", False)
    assert fast_dul.fast_acceptor() is None
    assert "is not 3.0.4: receiving through its stock acceptor" in caplog.text


def test_an_unloadable_fast_acceptor_gets_the_stock_one(monkeypatch, caplog):
    monkeypatch.delenv(fast_dul.STOCK_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "node.dicom.fast_acceptor", None)  # import raises
    assert fast_dul.fast_acceptor() is None
    assert "the fast acceptor cannot be loaded" in caplog.text


def test_a_node_on_another_pynetdicom_never_imports_the_fast_acceptor(tmp_path):
    """A fresh interpreter, pynetdicom's version changed before the node is imported:
    the SCP starts, answers C-ECHO, and node.dicom.fast_acceptor was never imported."""
    script = f"""
import sys
import pynetdicom
pynetdicom.__version__ = "9.9.9"
from support.nodes import free_port
from node.config import load_settings
from node.store.database import Index
from node.dicom.policy import AssociationPolicy
from node.store.receiving import Receiver
from node.dicom.scp import StorageSCP
from node.dicom.scu import echo
from node.store.spool import Spool
port = free_port()
s = load_settings("/dev/null", env={{}}, overrides={{"node.data_dir": {str(tmp_path)!r},
                  "node.dicom_port": port, "node.dicom_bind": "127.0.0.1"}})
index = Index(s.database_url)
scp = StorageSCP(s, Receiver(index, Spool(s.spool_dir)),
                 AssociationPolicy("TRAUMA_AI", [], lambda: 10**12, 0))
scp.start()
assert echo("127.0.0.1", port, "TRAUMA_AI") == 0
scp.stop(grace_s=1)
assert "node.dicom.fast_acceptor" not in sys.modules, "fast acceptor imported"
print("stock ok")
"""
    env = {k: v for k, v in os.environ.items() if k != fast_dul.STOCK_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT)])
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "stock ok" in result.stdout, result.stderr[-3000:]
    assert "pynetdicom 9.9.9 is not 3.0.4" in result.stderr


def test_the_forced_fallback_is_the_stock_server(tmp_path, monkeypatch):
    monkeypatch.setenv(fast_dul.STOCK_ENV, "1")
    from test_scp_statuses import InProcessNode

    node = InProcessNode(tmp_path)
    try:
        assert type(node.scp.server) is ThreadedAssociationServer
    finally:
        node.close()


def test_the_receive_suite_passes_through_the_stock_acceptor(tmp_path):
    env = {**os.environ, fast_dul.STOCK_ENV: "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         "--basetemp", str(tmp_path / "run"), *KEY_TESTS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1]
