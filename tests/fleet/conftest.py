"""Fixtures for the fleet's tests: a fresh control-plane database on SQLite and on PostgreSQL.

- ``store_url``: a URL to a fresh, migrated database; parametrized over "sqlite" (a file in
  tmp_path) and "postgresql" (a new database per test, dropped after).
- ``store``: a Store opened on ``store_url`` (both databases), closed after the test.
- ``sqlite_store_url`` / ``sqlite_store``: the same on SQLite only, for tests whose subject
  is not the database.
- ``empty_store_url``: like ``store_url`` but not migrated (for migration tests).

PostgreSQL: ``EDGESHIFT_TEST_POSTGRES_URL`` if set, else the local server below; its role
must be allowed to CREATE DATABASE. When it cannot be reached, the PostgreSQL tests fail
(CI runs both databases; a skip would hide that half the suite did not run).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from edgeshift.fleet.store import Store

LOCAL_POSTGRES_URL = "postgresql+psycopg://edgeshift:edgeshift@127.0.0.1:5432/edgeshift_test"
_HOW_TO_START = (
    "start PostgreSQL (e.g. `service postgresql start`; .ci/run does it) with a role that may "
    "CREATE DATABASE, or point EDGESHIFT_TEST_POSTGRES_URL at one"
)


def postgres_admin_url() -> str:
    return os.environ.get("EDGESHIFT_TEST_POSTGRES_URL", LOCAL_POSTGRES_URL)


def _connect_admin() -> psycopg.Connection[Any]:
    url = make_url(postgres_admin_url())
    try:
        return psycopg.connect(
            host=url.host or "127.0.0.1",
            port=url.port or 5432,
            user=url.username,
            password=url.password,
            dbname=url.database,
            autocommit=True,
            connect_timeout=5,
        )
    except psycopg.OperationalError as err:
        shown = url.render_as_string(hide_password=True)
        reason = str(err).strip().splitlines()[0]
        pytest.fail(f"PostgreSQL at {shown} cannot be reached ({reason}); {_HOW_TO_START}")


def _database_url(name: str) -> str:
    url = make_url(postgres_admin_url()).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def _postgres_template() -> Iterator[str]:
    """A database migrated once per session; each test's database is a copy of it."""
    name = f"edgeshift_tpl_{uuid.uuid4().hex[:12]}"
    with _connect_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        Store.open(_database_url(name)).close()
        # No one connects to it from now on (autovacuum would skip it too): a copy is refused
        # while anyone is connected to its source.
        with _connect_admin() as admin:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        yield name
    finally:
        _drop_postgres_database(name)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file made once per session; each test gets a copy."""
    path = tmp_path_factory.mktemp("fleet-template") / "fleet.db"
    Store.open(f"sqlite:///{path}").close()
    return path


def _new_postgres_database(template: str | None) -> str:
    name = f"edgeshift_t_{uuid.uuid4().hex[:12]}"
    suffix = f' TEMPLATE "{template}"' if template else ""
    with _connect_admin() as admin:
        for attempt in range(50):
            try:
                admin.execute(f'CREATE DATABASE "{name}"{suffix}')
                return name
            except psycopg.errors.ObjectInUse:
                # "source database is being accessed by other users": a background worker
                # (autovacuum) looked in for a moment.
                if attempt == 49:
                    raise
                time.sleep(0.1)
    return name


def _drop_postgres_database(name: str) -> None:
    # FORCE ends what a test left connected; it may not end autovacuum (another role's
    # process), which a plain DROP waits out instead.
    with _connect_admin() as admin:
        for attempt in range(50):
            try:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except psycopg.errors.InsufficientPrivilege:
                try:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
                    return
                except psycopg.errors.ObjectInUse:
                    if attempt == 49:
                        raise
                    time.sleep(0.1)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database on each of SQLite and PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "fleet.db"
        shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    name = _new_postgres_database(request.getfixturevalue("_postgres_template"))
    try:
        yield _database_url(name)
    finally:
        _drop_postgres_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database with no tables yet."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
        return
    name = _new_postgres_database(None)
    try:
        yield _database_url(name)
    finally:
        _drop_postgres_database(name)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store.open(store_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def sqlite_store_url(tmp_path: Path, _sqlite_template: Path) -> str:
    path = tmp_path / "fleet.db"
    shutil.copyfile(_sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def sqlite_store(sqlite_store_url: str) -> Iterator[Store]:
    opened = Store.open(sqlite_store_url)
    try:
        yield opened
    finally:
        opened.close()
