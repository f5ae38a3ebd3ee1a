"""External services for tests: skip with a reason locally, fail in CI.

CI sets TOKENQUOTA_REQUIRE_SERVICES=1; then a missing server is an error,
never a silent skip.
"""

from __future__ import annotations

import os

import pytest

POSTGRES_URL = os.environ.get(
    "TOKENQUOTA_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def require_postgres() -> str:
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure to reach it means the same thing here
        if os.environ.get("TOKENQUOTA_REQUIRE_SERVICES") == "1":
            pytest.fail(f"PostgreSQL is required (TOKENQUOTA_REQUIRE_SERVICES=1): {exc}")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")
    return POSTGRES_URL
