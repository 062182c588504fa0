"""The suite's own PostgreSQL server: found, started, stopped by its pid, restartable."""

from pathlib import Path

import psycopg
import pytest

from tests import postgres_server
from tests.postgres_server import (
    MISSING,
    URL_VARIABLE,
    MissingPostgres,
    own_server,
    server_bindir,
)
from tests.support import port_taken_first


def _fake_server(bindir: Path) -> None:
    bindir.mkdir(parents=True)
    for name in ("initdb", "postgres"):
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)


@pytest.mark.parametrize(
    ("versions", "expected"),
    [
        (["15"], "15"),
        (["9", "16", "15"], "16"),  # the newest, by number rather than by text
        ([], None),
    ],
)
def test_server_binaries_are_debians_newest_when_not_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, versions: list[str], expected: str | None
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    for version in versions:
        _fake_server(tmp_path / version / "bin")
    if expected is None:
        with pytest.raises(MissingPostgres, match="apt-get install postgresql"):
            server_bindir(tmp_path)
    else:
        assert server_bindir(tmp_path) == tmp_path / expected / "bin"


def test_server_binaries_on_path_come_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_server(tmp_path / "path")
    _fake_server(tmp_path / "debian" / "17" / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    assert server_bindir(tmp_path / "debian") == tmp_path / "path"


def test_missing_server_says_what_to_install_in_one_line() -> None:
    assert "\n" not in MISSING
    assert "WEBHOOKS_TEST_DATABASE_URL" in MISSING


@pytest.mark.postgres
def test_own_server_keeps_its_data_across_an_immediate_stop_and_is_stopped_by_pid() -> None:
    with own_server() as server:
        assert server.process is not None
        postmaster = server.process.pid
        with psycopg.connect(server.url, autocommit=True) as conn:
            backend_parent = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"
            ).fetchone()
            conn.execute("CREATE TABLE kept (n int)")
            conn.execute("INSERT INTO kept VALUES (1)")
        assert backend_parent is not None
        assert _parent_of(backend_parent[0]) == postmaster  # the pid is the postmaster's
        server.stop("immediate")
        assert server.process.poll() is not None
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(server.url, connect_timeout=1)
        server.start()
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT n FROM kept").fetchall() == [(1,)]
        root = server.root
    assert server.process.poll() is not None
    assert not root.exists()


@pytest.mark.postgres
def test_own_server_whose_port_was_taken_starts_on_another(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with port_taken_first(monkeypatch, postgres_server) as taken, own_server() as server:
        assert server.port != taken
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert "Address already in use" in capsys.readouterr().err


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_a_given_url_is_used_and_no_server_started(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_server() -> None:
        raise AssertionError("started a server although a URL was given")

    monkeypatch.setattr(postgres_server, "own_server", no_server)
    monkeypatch.setenv(URL_VARIABLE, "postgresql://someone@db.invalid/x")
    with postgres_server.database_url() as database:
        assert database.url == "postgresql://someone@db.invalid/x"
        assert database.origin == f"PostgreSQL: {URL_VARIABLE}"
