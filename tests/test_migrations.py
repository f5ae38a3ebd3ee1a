"""The migrations are the only schema source; they must match the table definitions."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

import tokenquota
from tests.services import require_postgres
from tokenquota.storage.sql.migrate import alembic_config, check, upgrade
from tokenquota.storage.sql.schema import metadata


def tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}


def round_trip(engine: sa.Engine) -> None:
    upgrade(engine)
    assert tables(engine) == set(metadata.tables)
    check(engine)  # `alembic check`: no difference between models and database
    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert tables(engine) == set()
    upgrade(engine)
    upgrade(engine)  # a second upgrade finds the schema at head and does nothing
    check(engine)


def test_sqlite_upgrade_check_downgrade(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    round_trip(engine)


def test_opening_a_store_migrates_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    tokenquota.open(url).close()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()
    check(engine)


@pytest.fixture
def postgres_engine() -> Iterator[sa.Engine]:
    url = require_postgres()
    schema = f"tq_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine = sa.create_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_postgres_upgrade_check_downgrade(postgres_engine: sa.Engine) -> None:
    round_trip(postgres_engine)
