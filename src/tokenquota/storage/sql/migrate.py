"""Apply the Alembic migrations from code, under the store's write lock."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", "tokenquota:migrations")
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    # One transaction holding the write lock: processes that start together
    # queue here, and each later one finds the schema already at head.
    with engine.connect() as conn:
        conn.execution_options(tokenquota_write=True)
        with conn.begin():
            config = alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, revision)


def check(engine: Engine) -> None:
    """Raise if the table definitions and the migrated database differ."""
    with engine.connect() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.check(config)
