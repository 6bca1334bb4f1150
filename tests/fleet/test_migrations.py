"""The store's Alembic migrations: upgrade from empty, models == migrations, downgrade, and the
URLs and schema versions the store refuses (on SQLite and on PostgreSQL)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from edgeshift.errors import FleetError
from edgeshift.fleet import migrations
from edgeshift.fleet.store import Store
from edgeshift.fleet.tables import Base

TABLES = {table.name for table in Base.metadata.sorted_tables}


def table_names(url: str) -> set[str]:
    engine, _ = migrations.make_engine(url)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names())
    finally:
        engine.dispose()


def test_open_migrates_an_empty_database_and_the_models_match(empty_store_url: str) -> None:
    assert table_names(empty_store_url) == set()
    Store.open(empty_store_url).close()
    assert table_names(empty_store_url) == TABLES | {"alembic_version"}
    engine, _ = migrations.make_engine(empty_store_url)
    try:
        with engine.connect() as connection:
            assert migrations.current_revision(connection) == migrations.head_revision()
            # `alembic check`: autogenerate finds nothing the migrations have not made.
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_downgrade_to_base_and_up_again(empty_store_url: str) -> None:
    Store.open(empty_store_url).close()
    engine, _ = migrations.make_engine(empty_store_url)
    try:
        migrations.downgrade(engine, "base")
        assert table_names(empty_store_url) == {"alembic_version"}
        migrations.upgrade(engine)
        assert table_names(empty_store_url) == TABLES | {"alembic_version"}
    finally:
        engine.dispose()


def test_two_stores_opening_one_empty_database_at_once(empty_store_url: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def open_it() -> None:
        barrier.wait()
        try:
            Store.open(empty_store_url).close()
        except BaseException as err:  # the test reports it below
            errors.append(err)

    threads = [threading.Thread(target=open_it) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert table_names(empty_store_url) == TABLES | {"alembic_version"}


def test_a_database_newer_than_the_code_is_refused(store_url: str) -> None:
    engine, _ = migrations.make_engine(store_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    finally:
        engine.dispose()
    with pytest.raises(FleetError) as caught:
        Store.open(store_url)
    message = str(caught.value)
    assert "9999_future" in message and "upgrade edgeshift" in message
    assert "\n" not in message


def test_migrate_false_refuses_an_unmigrated_database(empty_store_url: str) -> None:
    with pytest.raises(FleetError, match="migrations on"):
        Store.open(empty_store_url, migrate=False)
    Store.open(empty_store_url).close()
    Store.open(empty_store_url, migrate=False).close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql+pymysql://u:pw@127.0.0.1/x", "unsupported driver"),
        ("not a url", "cannot parse"),
        ("postgresql+psycopg://fleet:s3cr3tpw@127.0.0.1:1/fleet", "cannot use the fleet database"),
        ("sqlite:////nonexistent-dir/sub/fleet.db", "directory must exist"),
        ("sqlite://", "in memory"),
        ("sqlite:///:memory:", "in memory"),
    ],
)
def test_urls_the_store_cannot_use(url: str, expected: str) -> None:
    with pytest.raises(FleetError) as caught:
        Store.open(url)
    message = str(caught.value)
    assert expected in message
    assert "s3cr3tpw" not in message
    assert "\n" not in message
    if "127.0.0.1:1" in url:
        assert "fleet:***@127.0.0.1:1/fleet" in message
        assert caught.value.status == 503


def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database, " * 100)
    with pytest.raises(FleetError, match="is not a database; check the path"):
        Store.open(f"sqlite:///{path}")
    assert path.read_text() == "not a database, " * 100
