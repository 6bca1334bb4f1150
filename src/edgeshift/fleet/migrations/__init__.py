"""The fleet store's database: ``make_engine(url)`` connects (SQLite in WAL with a busy
timeout and foreign keys, or PostgreSQL through psycopg 3), ``upgrade(engine)`` brings it to
the newest schema revision this code knows (Alembic, run programmatically: no alembic.ini).
The revisions live in versions/; env.py is Alembic's entry point."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from edgeshift.errors import FleetError

MIGRATIONS_DIR = Path(__file__).resolve().parent
# Any fixed number: PostgreSQL sessions migrating the same database take turns on it.
_PG_LOCK_KEY = 0x6564676573686966
_ALEMBIC_LOCK = threading.Lock()


SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 5
_URL_HELP = "give sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"


def make_engine(url: str) -> tuple[Engine, str]:
    """An engine for URL and the URL as it may be shown (password hidden). FleetError for a
    URL the store cannot use."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise FleetError(f"cannot parse the fleet database URL: {_URL_HELP}") from None
    shown = parsed.render_as_string(hide_password=True)
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "postgresql" and "+" not in parsed.drivername:
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is what we ship with
    elif (backend, driver) not in {("sqlite", "pysqlite"), ("postgresql", "psycopg")}:
        raise FleetError(f"the fleet database {shown} uses an unsupported driver: {_URL_HELP}")
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise FleetError(
            f"the fleet database {shown} is in memory, which each of the control plane's "
            "connections would see empty: give sqlite:///PATH"
        )
    try:
        if backend == "sqlite":
            engine = _sqlite_engine(parsed)
        else:
            engine = create_engine(
                parsed,
                pool_pre_ping=True,
                connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S},
            )
    except (NoSuchModuleError, ImportError) as err:
        raise FleetError(
            f"the fleet database {shown} needs a driver that is not installed ({err}): "
            "pip install 'edgeshift[postgres]' or use sqlite:///PATH"
        ) from None
    return engine, shown


# Connections kept open: as many as the control plane's worker threads (fleet.server), so a
# burst of requests reuses them instead of opening (and setting up WAL on) overflow
# connections and closing them again.
SQLITE_POOL_SIZE = 64
SQLITE_CACHE_KIB = 512  # per connection


def _sqlite_engine(url: URL) -> Engine:
    engine = create_engine(url, pool_size=SQLITE_POOL_SIZE, max_overflow=SQLITE_POOL_SIZE)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # We say BEGIN ourselves (below): pysqlite's implicit one starts too late and too weak.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _set_wal(cursor)
        # WAL + NORMAL: a crash of the process loses nothing; a power cut may lose the last
        # commits but never corrupts the file.
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        # Each connection's own page cache (SQLite's default: 2 MB) would hold the same hot
        # pages 64 times over (the pool keeps 64); the OS page cache is shared by them all.
        cursor.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A writer takes the write lock up front: two writers queue on busy_timeout instead of
        # one failing with "database is locked" when its read turns into a write.
        write = connection.get_execution_options().get("edgeshift_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _set_wal(cursor: Any) -> None:
    # Switching a new file to WAL needs it to itself and does not wait on busy_timeout: a
    # second connection opening the same new file at that moment is told "locked". Retry.
    deadline_s = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline_s:
                raise
            time.sleep(0.01)


def one_line(err: BaseException, url: str = "") -> str:
    """The first line of a driver's error, with the URL's password taken out."""
    lines = str(getattr(err, "orig", None) or err).strip().splitlines()
    line = lines[0] if lines else type(err).__name__
    try:
        password = make_url(url).password if url else None
    except ArgumentError:
        password = None
    return line.replace(str(password), "***") if password else line


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def known_revisions() -> set[str]:
    return {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    # Alembic keeps its running context in a module global: two threads of one process must
    # not migrate at once. (Processes take turns on the database's own lock, below.)
    with _ALEMBIC_LOCK, engine.connect() as connection:
        connection.execution_options(edgeshift_write=True)
        if connection.dialect.name == "postgresql":
            # Released at the end of the transaction the migration runs in.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        command.upgrade(alembic_config(connection), revision)
        connection.commit()


def downgrade(engine: Engine, revision: str = "base") -> None:
    with _ALEMBIC_LOCK, engine.connect() as connection:
        command.downgrade(alembic_config(connection), revision)
        connection.commit()
