"""SQL backends (SQLite today, PostgreSQL next) through SQLAlchemy Core."""

from tokenquota.storage.sql.store import SqlStore

__all__ = ["SqlStore"]
