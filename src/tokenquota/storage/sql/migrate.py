"""Apply the Alembic migrations from code, under the store's write lock."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

# Replicas that start together on an empty PostgreSQL must not all create the
# tables: the first migrates, the others wait here and find the schema at head.
_MIGRATION_LOCK = text("SELECT pg_advisory_xact_lock(29810)")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", "tokenquota:migrations")
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    # One transaction holding the write lock (BEGIN IMMEDIATE on SQLite, an
    # advisory lock on PostgreSQL): processes that start together queue here,
    # and each later one finds the schema already at head.
    with engine.connect() as conn:
        conn.execution_options(tokenquota_write=True)
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(_MIGRATION_LOCK)
            config = alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, revision)


def check(engine: Engine) -> None:
    """Raise if the table definitions and the migrated database differ."""
    with engine.connect() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.check(config)
