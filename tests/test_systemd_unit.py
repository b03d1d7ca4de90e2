"""deploy/trauma-node.service: valid for systemd, hardened, and stopping within its time.

`systemd-analyze verify` loads the unit as systemd would, offline (no running systemd
needed). It checks that ExecStart's program exists and is executable, so the test
verifies a copy whose ExecStart points at this checkout's trauma-node; everything else
is the unit as shipped. It reports unknown keys and values it cannot parse as warnings
on stderr, exit status 0: any line naming the unit fails the test. Lines that do not
name it concern the machine running the test (its own units, no running systemd) and
are tolerated. The service user need not exist here: verify does not resolve User=.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.nodes import ROOT
from node.cli import parser
from node.config import NodeSection

UNIT = ROOT / "deploy" / "trauma-node.service"
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
INSTALLED = "/opt/trauma-node/bin/trauma-node"
DATA_DIR = "/var/lib/trauma-node"


def service_section(text: str) -> dict[str, list[str]]:
    """[Service] keys and their values, in order (a key may be given more than once)."""
    values: dict[str, list[str]] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60}
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    copy = tmp_path / UNIT.name
    copy.write_text(unit_text)
    return subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", f"./{copy.name}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)


def for_this_checkout(text: str) -> str:
    venv_binary = Path(sys.executable).parent / "trauma-node"
    assert venv_binary.exists(), f"{venv_binary}: install the project (make install-test)"
    assert text.count(f"ExecStart={INSTALLED} ") == 1
    return text.replace(f"ExecStart={INSTALLED} ", f"ExecStart={venv_binary} ")


@pytest.fixture(scope="module")
def unit_text() -> str:
    assert shutil.which(SYSTEMD_ANALYZE), "systemd-analyze missing: make system-deps"
    return UNIT.read_text()


def test_systemd_analyze_verify_accepts_the_unit(unit_text, tmp_path):
    result = verify(for_this_checkout(unit_text), tmp_path)
    about_the_unit = [line for line in result.stderr.splitlines() if UNIT.name in line]
    assert result.returncode == 0 and about_the_unit == [], result.stderr


@pytest.mark.parametrize("old, new", [
    ("ProtectSystem=strict", "ProtectSytem=strict"),  # unknown key: a warning, status 0
    ("RestartSec=5", "RestartSec=five"),  # unparsable value: a warning, status 0
    (f"ExecStart={INSTALLED} ", "ExecStart=/nonexistent/trauma-node "),  # no program
], ids=["unknown-key", "bad-value", "missing-program"])
def test_verify_would_catch_a_broken_unit(unit_text, tmp_path, old, new):
    """The check above can fail: each of these is reported."""
    assert old in unit_text
    text = unit_text.replace(old, new)
    if "/nonexistent/" not in text:
        text = for_this_checkout(text)
    result = verify(text, tmp_path)
    about_the_unit = [line for line in result.stderr.splitlines()
                      if UNIT.name in line or "/nonexistent/" in line]
    assert result.returncode != 0 or about_the_unit, result.stderr


def test_unit_is_hardened(unit_text):
    s = service_section(unit_text)
    assert s["User"] == ["trauma-node"] and s["Group"] == ["trauma-node"]
    assert s["ProtectSystem"] == ["strict"]
    assert s["ProtectHome"] == ["true"] and s["PrivateTmp"] == ["true"]
    assert s["NoNewPrivileges"] == ["true"]
    assert s["StateDirectory"] == ["trauma-node"]
    assert DATA_DIR in " ".join(s["ReadWritePaths"]).split()
    # No capabilities at all (ports 11112 and 8080); port 104 is documented, not enabled.
    assert s["CapabilityBoundingSet"] == [""]
    assert "AmbientCapabilities" not in s
    assert "#   AmbientCapabilities=CAP_NET_BIND_SERVICE" in unit_text
    assert s["Restart"] == ["on-failure"] and seconds(s["RestartSec"][0]) > 0
    # The whole control group gets SIGTERM (workers with serve): systemd's default.
    assert s.get("KillMode", ["control-group"]) == ["control-group"]


def test_unit_waits_longer_than_the_node_takes_to_stop(unit_text):
    timeout = seconds(service_section(unit_text)["TimeoutStopSec"][0])
    assert timeout > NodeSection().stop_timeout_s + 5  # a margin for the interpreter's exit


def test_exec_start_is_the_cli_as_it_is(unit_text):
    argv = shlex.split(service_section(unit_text)["ExecStart"][0])
    assert argv[0] == INSTALLED
    args = parser().parse_args(argv[1:])  # SystemExit on a flag the CLI does not have
    assert args.func.__name__ == "cmd_serve"
    assert args.config == "/etc/trauma-node/node.toml"
    assert args.data_dir == DATA_DIR
    assert service_section(unit_text)["WorkingDirectory"] == [DATA_DIR]
