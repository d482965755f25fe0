"""A throwaway PostgreSQL cluster for tests: Debian's server binaries (package `postgresql`,
installed by `scripts/setup.sh --test`) from /usr/lib/postgresql/<highest>/bin, initdb into a
temporary directory, the server on a free TCP port on 127.0.0.1 with its unix socket in that
directory, trust authentication for one superuser, removed at the end.

initdb refuses to run as root: as root, the server binaries run as the `postgres` system user
(runuser), which owns the temporary directory. The directory is made under /tmp rather than
pytest's tmp_path, whose parents are private to root.
"""
from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.server import free_port

PG_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "aquamask"
SKIP_REASON = "PostgreSQL server binaries not installed: run scripts/setup.sh --test"


def find_bindir() -> Path | None:
    """The bin folder of the highest PostgreSQL version installed, or None."""
    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parents[1].name))
    found = [p for p in PG_ROOT.glob("*/bin/initdb") if (p.parent / "pg_ctl").exists()]
    return max(found, key=version).parent if found else None


class PostgresCluster:
    """One initdb'd cluster; `start()` it, `create_database()` as many as needed, `stop()`."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                import pwd
                entry = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no `postgres` system user to run "
                            "PostgreSQL as: run scripts/setup.sh --test")
            self._uid, self._gid = entry.pw_uid, entry.pw_gid
        self.dir = Path(tempfile.mkdtemp(prefix="aquamask-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = 0
        self.running = False

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        command = [str(a) for a in args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, cwd=self.dir, capture_output=True, text=True,
                                timeout=120)
        if result.returncode:
            log = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}{log}")
        return result

    def start(self) -> None:
        if self.as_root:
            os.chown(self.dir, self._uid, self._gid)
        self._run(self.bindir / "initdb", "-D", self.data, "-U", SUPERUSER, "--auth=trust",
                  "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        for attempt in range(5):  # another process may take the free port before we bind it
            self.port = free_port()
            try:
                self._start_server()
                break
            except RuntimeError:
                if attempt == 4:
                    raise
                time.sleep(0.2)
        self.running = True
        atexit.register(self.stop)

    def _start_server(self) -> None:
        # durability off: the cluster is thrown away, and fsync would slow every commit
        options = (f"-c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(self.bindir / "pg_ctl", "-D", self.data, "-l", self.log, "-w",
                  "-t", "60", "-o", f"-p {self.port} {options}", "start")

    def pause(self) -> None:
        """Stop the server as a restart or a fail-over does (every session cut), keeping its
        data and port for ``resume``."""
        self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        self._start_server()

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg
        with psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; its SQLAlchemy URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop it, ending the sessions still open on it (pools of stores in this process)."""
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.running:
            self.running = False
            try:
                self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", "immediate", "-w",
                          "stop")
            except RuntimeError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def running_cluster() -> Iterator[PostgresCluster]:
    """A started throwaway cluster, stopped and removed at the end; skips the tests that
    need it when the server binaries are not installed."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(SKIP_REASON)
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
