"""A throwaway PostgreSQL server on loopback, for the tests of a shared database.

Debian's PostgreSQL (`make test` installs it) refuses to run as root, so as root the
server runs as the `postgres` user, in a folder of its own under /tmp; trust
authentication, loopback only, no fsync: a test database, gone when the test ends.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from support.nodes import free_port

USER = "trauma"


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is missing: `make test` installs Debian's "
                           "postgresql package")
    return found[-1]  # the newest major version


class PostgresServer:
    def __init__(self, database: str = "trauma"):
        self.database = database
        self.port = free_port()
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.root = Path(tempfile.mkdtemp(prefix="trauma-pg-"))
        self.data = self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self.as_postgres, *cmd], check=True, capture_output=True, timeout=120)

    def __enter__(self) -> "PostgresServer":
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(_bin("initdb"), "-D", str(self.data), "-U", USER, "-A", "trust", "--no-sync",
                  "-E", "UTF8")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=100")
        try:
            self._run(_bin("pg_ctl"), "start", "-D", str(self.data), "-w", "-t", "60",
                      "-l", str(self.root / "server.log"), "-o", options)
            self._run(_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER,
                      self.database)
        except subprocess.CalledProcessError as exc:
            log = self.root / "server.log"
            raise RuntimeError(f"PostgreSQL did not start: {exc.stderr.decode()[-1000:]}"
                               f"{log.read_text()[-2000:] if log.exists() else ''}") from None
        return self

    def __exit__(self, *exc) -> None:
        try:  # fast shutdown: open sessions are ended, not waited for
            self._run(_bin("pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w",
                      "-t", "30")
        except subprocess.CalledProcessError:
            pass  # never started
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
