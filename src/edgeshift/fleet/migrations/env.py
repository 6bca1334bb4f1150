"""Alembic's entry point for the fleet store. The store runs it programmatically
(``Store.open``) and hands over its open connection in ``config.attributes["connection"]``;
no alembic.ini is needed."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from edgeshift.fleet.tables import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "the fleet migrations run from edgeshift.fleet.store (Store.open), "
            "which passes its connection in config.attributes['connection']"
        )
    _run(connection)


run()
