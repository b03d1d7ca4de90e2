"""The Makefile on a fresh machine: its apt steps wait for the dpkg lock that another apt
(unattended-upgrades at boot) may hold, instead of failing at once."""

from __future__ import annotations

import re
import subprocess

from support.nodes import ROOT


def test_every_apt_get_waits_for_the_dpkg_lock():
    # What `make test` would run on a machine that lacks a test tool (printed, not run).
    dry = subprocess.run(["make", "-n", "-C", str(ROOT), "system-deps",
                          "TEST_TOOLS=/nonexistent/tool"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    calls = re.findall(r"apt-get(?:\s+-o\s+\S+)*\s+(\w+)", dry)
    assert sorted(calls) == ["install", "update"], dry
    for line in dry.splitlines():
        if "apt-get" in line:
            assert re.search(r"apt-get -o DPkg::Lock::Timeout=\d{3,} ", line), line
    # and no recipe calls apt-get but through $(APT_GET)
    makefile = (ROOT / "Makefile").read_text()
    code = [line for line in makefile.splitlines() if not line.lstrip().startswith("#")]
    assert [line for line in code if re.search(r"\bapt-get\b", line)] == [
        "APT_GET := apt-get -o DPkg::Lock::Timeout=600"]
