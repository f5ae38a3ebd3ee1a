"""SQLite and PostgreSQL: the SQL catalog and the SQL meter over one database."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from tokenquota.storage.composed import ComposedStore
from tokenquota.storage.sql.catalog import SqlCatalog
from tokenquota.storage.sql.ledger import SqlCounters, SqlLedger
from tokenquota.storage.sql.meter import SqlMeter
from tokenquota.storage.sql.tx import Database
from tokenquota.storage.sql.webhooks import SqlWebhooks


class SqlStore(ComposedStore):
    def __init__(
        self,
        url: str,
        tz: ZoneInfo | None,
        *,
        move_timezone: bool = False,
        migrate: bool = True,
    ) -> None:
        self.db = Database(url, migrate=migrate)
        self.engine = self.db.engine
        ledger = SqlLedger(self.db)
        counters = SqlCounters(self.db, ledger)
        catalog = SqlCatalog(self.db, counters)
        meter = SqlMeter(self.db, catalog, ledger, counters)
        super().__init__(catalog, meter)
        self._sql_meter = meter
        self.alerts = SqlWebhooks(self.db)
        try:
            self.db.pin_timezone(tz, move_timezone, meter.rebuild_in)
        except BaseException:
            self.db.close()  # a store that failed to open keeps no connections
            raise

    @property
    def _single_lock(self) -> bool:
        """bench/bench_hot_rows.py's switch to the lock design before issue 6."""
        return self.db.single_lock

    @_single_lock.setter
    def _single_lock(self, value: bool) -> None:
        self.db.single_lock = value

    def close(self) -> None:
        self._sql_meter.close()
        self.db.close()

    def ping(self) -> None:
        self.db.ping()
