"""Opens the database named by a URL: SQLite (WAL) by default, PostgreSQL in production."""

from urllib.parse import urlsplit

import peewee as pw
from playhouse.db_url import parse
from playhouse.pool import PooledPostgresqlDatabase, PooledSqliteDatabase

from service.store.tables import database_proxy

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    # WAL + NORMAL is durable across application crashes; only an OS crash can lose
    # the last transactions, which Kafka then redelivers (offsets commit after the DB).
    "synchronous": "normal",
    "foreign_keys": 1,
    "busy_timeout": 10_000,
    "cache_size": -64_000,
    # The service checkpoints on a thread of its own (checkpoint.py); a commit runs one
    # itself only once the WAL holds this many pages (~64 MB), say if that thread lags.
    "wal_autocheckpoint": 16_000,
}


# Pooled connections are taken per unit of work and returned, so shutdown can close
# them all from one thread; stale ones are replaced after five minutes.
POOL = {"max_connections": 32, "stale_timeout": 300}
CONNECT_TIMEOUT_SECONDS = 5  # unless the URL sets connect_timeout


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL; None for other databases and in-memory ones."""
    if urlsplit(url).scheme != "sqlite":
        return None
    path = url[len("sqlite:///") :]
    return path if path and path != ":memory:" else None


def open_database(url: str) -> pw.Database:
    """A connection pool for the URL (nothing connects yet), bound to the table models."""
    scheme = urlsplit(url).scheme
    db: pw.Database
    if scheme == "sqlite":
        path = url[len("sqlite:///") :]
        # IMMEDIATE takes the write lock at BEGIN, so two writers queue instead of
        # failing with SQLITE_BUSY when a read transaction upgrades.
        db = PooledSqliteDatabase(  # type: ignore[no-untyped-call]
            path,
            pragmas=SQLITE_PRAGMAS,
            lock_type="IMMEDIATE",
            # A pooled connection moves between threads, one user at a time.
            check_same_thread=False,
            **POOL,
        )
    elif scheme in ("postgresql", "postgres"):
        params = parse(url)  # type: ignore[no-untyped-call]
        # A database host that drops packets (a failover in progress) would hold a connect
        # for the kernel's TCP timeout, minutes; calls are answered UNAVAILABLE sooner.
        params.setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)
        # psycopg 3: binary parameters and COPY for the hot path's batches (bulk.py). No
        # prepared statements: a generic plan made while a table was nearly empty stayed,
        # a sequential scan per attempt batch.
        db = PooledPostgresqlDatabase(  # type: ignore[no-untyped-call]
            params.pop("database"), **params, **POOL, prefer_psycopg3=True, prepare_threshold=None
        )
    else:
        raise ValueError(f"unsupported database URL scheme {scheme!r}")
    database_proxy.initialize(db)
    return db


def is_postgres(db: pw.Database) -> bool:
    return isinstance(db, pw.PostgresqlDatabase)


def safe_url(url: str) -> str:
    """The database URL without its password, for messages."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, userinfo = head.partition("://")
    return f"{scheme}://{userinfo.split(':')[0]}@{tail}"
