"""The suite's own PostgreSQL: a throwaway cluster in a temporary directory, on a free
loopback port, trust auth, stopped by its process id; or the server that
WEBHOOKS_TEST_DATABASE_URL names.

Hand-written rather than pytest-postgresql's process fixture: that runs initdb and pg_ctl as
the current user, and PostgreSQL refuses root, which is who runs the suite here (it would need a
runuser wrapper for pg_ctl and its data directory moved out of pytest's private temporary
tree); it stops the server through pg_ctl and a data directory, never knowing the postmaster's
pid; and `make bench` needs the same server outside pytest.
"""

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import psycopg

from kafka.embedded import free_port

URL_VARIABLE = "WEBHOOKS_TEST_DATABASE_URL"
DATABASE = "test"
# The postmaster's shutdown modes, as pg_ctl sends them.
STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
MISSING = (
    "PostgreSQL's server (initdb, postgres) is not installed: `apt-get install postgresql` "
    f"(make test does this as root), or set {URL_VARIABLE} to a server"
)


class MissingPostgres(RuntimeError):
    """No server binaries here and no URL given."""


def server_bindir(debian: Path = Path("/usr/lib/postgresql")) -> Path:
    """Where initdb and postgres are: on PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        return Path(on_path).resolve().parent
    versions = sorted(
        debian.glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not versions:
        raise MissingPostgres(MISSING)
    return versions[-1].parent


def _owner() -> dict[str, Any]:
    """Who runs the cluster: PostgreSQL refuses root, so root hands it to the `postgres` user
    that Debian's package creates (Popen sets the uid itself, so its pid is the postmaster's)."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise MissingPostgres(f"running as root and no `postgres` user: {MISSING}") from None
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


class PostgresExited(RuntimeError):
    """The server's process ended while it started."""


@dataclass
class PostgresServer:
    """One cluster under `root`: initialise once, then start and stop as often as a test needs."""

    bindir: Path
    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    initdb_seconds: float = 0.0
    start_seconds: float = 0.0

    @property
    def url(self) -> str:
        return self._url(DATABASE)

    @property
    def admin_url(self) -> str:
        return self._url("postgres")

    def _url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def init(self) -> None:
        began = time.monotonic()
        owner = _owner()
        if owner:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            [
                str(self.bindir / "initdb"),
                *("-D", str(self.root / "data"), "-U", "postgres", "--auth=trust"),
                *("-E", "UTF8", "--locale=C", "--no-sync"),
            ],
            check=True,
            capture_output=True,
            cwd=self.root,
            **owner,
        )
        self.initdb_seconds = time.monotonic() - began

    def start(self, wait_seconds: float = 30.0) -> None:
        began = time.monotonic()
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                *("-D", str(self.root / "data"), "-p", str(self.port), "-k", str(self.root)),
                *("-c", "listen_addresses=127.0.0.1"),
            ],
            stdout=log,
            stderr=log,
            cwd=self.root,
            start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, which stops it
            **_owner(),
        )
        log.close()
        deadline = time.monotonic() + wait_seconds
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise PostgresExited(f"postgres exited with {code}: {self._why()}")
            try:
                psycopg.connect(self.admin_url, connect_timeout=1).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop("immediate")
                    raise RuntimeError(f"postgres did not answer within {wait_seconds} s") from None
                time.sleep(0.05)
        self.start_seconds = time.monotonic() - began

    def _why(self) -> list[str]:
        """The log's lines that say what went wrong (a port taken is a LOG line, "could not
        bind ..."), else its last three."""
        lines = self.log.read_text(errors="replace").strip().splitlines()
        marks = ("FATAL:", "ERROR:", "PANIC:", "could not")
        return [line for line in lines if any(m in line for m in marks)][-4:] or lines[-3:]

    def stop(self, mode: str = "fast", wait_seconds: float = 30.0) -> None:
        """Signals the postmaster by its pid as `pg_ctl stop -m mode` would; SIGKILL if it
        outlives `wait_seconds`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(STOP_SIGNALS[mode])
        try:
            self.process.wait(wait_seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def own_server() -> Iterator[PostgresServer]:
    """A new cluster with a `test` database, removed with its directory afterwards."""
    bindir = server_bindir()
    root = Path(tempfile.mkdtemp(prefix="webhooks-pg-"))
    server = PostgresServer(bindir, root, free_port())
    try:
        server.init()
        try:
            server.start()
        except PostgresExited as exited:
            # Its port was taken after free_port found it (as tests.apache_kafka's can be).
            print(f"{exited}\nstarting again on another port", file=sys.stderr)
            server.port = free_port()
            server.start()
        with psycopg.connect(server.admin_url, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {DATABASE}")
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


class Database(NamedTuple):
    url: str
    origin: str  # one line for the test summary: which server, and its start time


@contextmanager
def database_url() -> Iterator[Database]:
    """A database the suite may make schemas in: WEBHOOKS_TEST_DATABASE_URL's when set, else
    one on a server of its own, started here and stopped afterwards."""
    if given := os.environ.get(URL_VARIABLE):
        yield Database(given, f"PostgreSQL: {URL_VARIABLE}")
        return
    with own_server() as server:
        yield Database(
            server.url,
            f"PostgreSQL: own server on 127.0.0.1:{server.port}, initdb "
            f"{server.initdb_seconds:.2f} s, start {server.start_seconds:.2f} s",
        )
