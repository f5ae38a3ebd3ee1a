"""Alembic environment: runs on a connection handed over by tokenquota.

tokenquota opens the connection itself (with SQLite's write lock taken) so
several processes starting at once do not race to create the schema.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from tokenquota.storage.sql.schema import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        _run(conn)


main()
