"""Service settings: flags > ``TOKENQUOTA_*`` environment > TOML file > defaults.

Built by the app factory or the CLI, never at import time, so tests and
several apps in one process each get their own.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

if TYPE_CHECKING:
    from tokenquota.domain.clock import Clock
    from tokenquota.engine.quota import Quota

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("tokenquota_config_file", default=None)


class DefaultLimit(BaseModel):
    """One system default from the config file, e.g. every user gets 50,000 tokens a day."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    metric: str
    window: str | None = None
    limit: int | str | None
    shadow: bool = False
    thresholds: list[int] | None = None  # alert thresholds, whole percentages (docs/alerts.md)


class UpstreamSetting(BaseModel):
    """One OpenAI-compatible model server behind the gateway (docs/gateway.md)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    url: str = Field(min_length=1, max_length=2_048, pattern=r"^https?://")
    api_key: SecretStr | None = None
    models: list[str] = Field(default_factory=list, max_length=1_000)
    resource: str | None = Field(
        None,
        description=(
            "The subject charged as a resource (contract §6) when a resource quota exists "
            "for it; default deployment:<name>"
        ),
    )


class PriceSetting(BaseModel):
    """What one model costs, in credits per million tokens, from ``since`` on."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128)
    input_per_million: Decimal = Field(ge=0, decimal_places=3, max_digits=21)
    output_per_million: Decimal = Field(ge=0, decimal_places=3, max_digits=21)
    version: str = Field("1", min_length=1, max_length=64)
    since: datetime | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOKENQUOTA_", extra="forbid")

    db: str = Field(
        "sqlite:///tokenquota.db",
        description="Store URL: sqlite:///path, postgresql://user@host/db or memory://",
    )
    redis: str | None = Field(
        None, description="redis://host:port: hot counters in Redis (or a Redis Cluster)"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    access_log: bool = Field(
        False,
        description=(
            "Log one line per request and one per decision (tokenquota.access and "
            "tokenquota.decisions); off by default, since writing them costs a share of a "
            "decision's time on the service"
        ),
    )
    log_format: Literal["json", "text"] = Field(
        "json",
        description=(
            "How serve writes its log lines: json (one object a line, for log collectors) "
            "or text (for a terminal)"
        ),
    )
    keep_alive_seconds: int = Field(
        5,
        ge=1,
        le=3_600,
        description=(
            "How long an idle keep-alive connection is kept open; behind a load balancer, "
            "set it above the balancer's own idle timeout"
        ),
    )
    timezone: str | None = Field(
        None,
        description=(
            "IANA zone for calendar windows of a new store; an existing store in another "
            "zone is refused until `tokenquota rebuild --timezone` moves it"
        ),
    )
    strict_subjects: bool = False
    on_store_error: Literal["closed", "open"] = Field(
        "closed",
        description=(
            "closed: answer 503 while the store is unreachable; open: admit and queue the "
            "usage in the spool file until the store is back"
        ),
    )
    spool: str = Field(
        "tokenquota-spool.db",
        min_length=1,
        max_length=4_096,
        description="With on_store_error=open: the local file that keeps queued usage",
    )
    admin_key: SecretStr | None = Field(None, description="A bootstrap admin key")
    key_cache_seconds: float = Field(
        1.0,
        ge=0,
        le=1,
        description=(
            "How long a replica trusts an API key it looked up without asking the store "
            "again (0 to 1; 0 asks every time): a key revoked on another replica is "
            "refused here within this bound, and at once on the replica that revoked it"
        ),
    )
    defaults: list[DefaultLimit] = Field(default_factory=list, max_length=1_000)
    max_body_bytes: int = Field(256 * 1024, ge=1_024, le=16 * 1024 * 1024)
    threads: int = Field(
        40,
        ge=1,
        le=1_000,
        description=(
            "Threads for store calls other than decisions and reads (authentication, "
            "administration); the event loop never makes one"
        ),
    )
    decision_threads: int = Field(
        40,
        ge=1,
        le=1_000,
        description=(
            "Threads only decisions use (check, consume, reservations, leases, compat "
            "record calls), so they never queue behind reads"
        ),
    )
    read_threads: int = Field(
        8,
        ge=1,
        le=1_000,
        description=(
            "Threads for reads (usage, history, the ledger and exports, audit, lists); "
            "keep it below the store's connection pool (15) so decisions find a connection"
        ),
    )
    heavy_reads_per_key: int = Field(
        2,
        ge=1,
        le=1_000,
        description=(
            "History and ledger reads one API key may have in flight; one more is a 429 "
            "too_many_requests"
        ),
    )

    retention_days: int = Field(
        400,
        ge=1,
        le=3_660,
        description=(
            "How far back a consume may be dated; calendar counter buckets are kept this "
            "long past their period (docs/retention.md)"
        ),
    )
    idempotency_hours: float = Field(
        168,
        ge=24,
        le=24 * 3_660,
        description="How long idempotency answers are kept, at least 24 hours",
    )
    holds_hours: float = Field(
        168,
        ge=0,
        le=24 * 3_660,
        description="How long reservations and leases are kept after they ended",
    )
    prune_interval_seconds: float = Field(
        3_600,
        ge=0,
        le=7 * 86_400,
        description="How often the service prunes in the background; 0 turns it off",
    )
    prune_batch: int = Field(
        500, ge=1, le=10_000, description="Records one pruning batch (one transaction) removes"
    )
    prune_max_batches: int = Field(
        1_000, ge=1, le=1_000_000, description="Batches one background pruning run takes"
    )
    prune_pause_ms: float = Field(
        10, ge=0, le=60_000, description="The pause between two pruning batches"
    )
    ledger_archive_days: int | None = Field(
        None,
        ge=1,
        le=36_600,
        description=(
            "Off (the ledger is kept) unless set: usage events older than this many days are "
            "exported to ledger_archive_dir, then deleted (docs/retention.md)"
        ),
    )
    ledger_archive_dir: str = Field(
        "tokenquota-archive",
        min_length=1,
        max_length=4_096,
        description="Where archived ledger events are written, as JSON lines",
    )
    prune_grace_seconds: float = Field(
        3_600,
        ge=0,
        le=7 * 86_400,
        description="Added to every horizon, for replicas whose clocks are behind",
    )

    webhook_key: SecretStr | None = Field(
        None,
        min_length=16,
        description=(
            "The server key webhook signing secrets are derived from (and users' own secrets "
            "sealed under): the same random string on every replica. Unset: no webhook "
            "endpoint can be made and nothing is delivered (docs/webhooks.md)"
        ),
    )
    webhook_poll_seconds: float = Field(
        1.0,
        ge=0,
        le=3_600,
        description=(
            "How often the delivery worker looks for work; 0: this process runs none "
            "(another replica delivers)"
        ),
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="How long one webhook POST may take"
    )
    webhook_max_attempts: int = Field(
        8, ge=1, le=100, description="Attempts before a delivery is failed (the dead letter)"
    )
    webhook_backoff_seconds: float = Field(
        10.0,
        ge=0,
        le=86_400,
        description="The first retry waits up to this long (full jitter), doubled each attempt",
    )
    webhook_backoff_max_seconds: float = Field(
        3_600.0, ge=0, le=7 * 86_400, description="The longest wait between two attempts"
    )
    upstreams: list[UpstreamSetting] = Field(default_factory=list, max_length=100)
    prices: list[PriceSetting] = Field(default_factory=list, max_length=10_000)
    gateway_max_tokens: int = Field(
        1_024,
        ge=1,
        le=10_000_000,
        description=(
            "Gateway: the completion tokens reserved (and asked of the upstream) when a "
            "request names no max_tokens"
        ),
    )
    gateway_hold_seconds: float = Field(
        900,
        ge=1,
        le=86_400,
        description="Gateway: how long a call's reservation and lease last if never ended",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _CONFIG_FILE.get()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **flags: Any) -> Settings:
        """Settings from flags (None means not given), the environment and a TOML file.

        The file is ``config_file`` or ``$TOKENQUOTA_CONFIG``.
        """
        path = config_file or os.environ.get("TOKENQUOTA_CONFIG")
        token = _CONFIG_FILE.set(Path(path) if path else None)
        try:
            return cls(**{k: v for k, v in flags.items() if v is not None})
        finally:
            _CONFIG_FILE.reset(token)

    def pruning(self) -> dict[str, Any]:
        """The background pruning's options (engine/retention.py ``start_pruning``)."""
        return {
            "interval": self.prune_interval_seconds,
            "idempotency_hours": self.idempotency_hours,
            "holds_hours": self.holds_hours,
            "grace_seconds": self.prune_grace_seconds,
            "batch": self.prune_batch,
            "max_batches": self.prune_max_batches,
            "pause": self.prune_pause_ms / 1000,
            "archive_days": self.ledger_archive_days,
            "archive_dir": self.ledger_archive_dir,
        }

    def webhooks(self) -> dict[str, Any]:
        """The delivery worker's options (engine/delivery.py ``DeliveryOptions``)."""
        return {
            "poll": self.webhook_poll_seconds,
            "timeout": self.webhook_timeout_seconds,
            "max_attempts": self.webhook_max_attempts,
            "backoff": self.webhook_backoff_seconds,
            "backoff_max": self.webhook_backoff_max_seconds,
        }

    def default_rules(self) -> list[dict[str, Any]]:
        return [d.model_dump() for d in self.defaults]


def open_quota(
    settings: Settings, *, clock: Clock | None = None, move_timezone: bool = False
) -> Quota:
    """The store these settings name, opened the way every entry point opens it.

    ``serve`` and every other command open through here, so a TOML file that
    gives the store, the zone, the defaults or strict subjects makes the CLI
    decide exactly as the service does on the same store.
    """
    import tokenquota  # here: the engine is not needed to read settings

    return tokenquota.open(
        settings.db,
        redis=settings.redis,
        timezone=settings.timezone,
        move_timezone=move_timezone,
        strict_subjects=settings.strict_subjects,
        defaults=settings.default_rules(),
        clock=clock,
        on_store_error=settings.on_store_error,
        spool=settings.spool,
        key_cache_seconds=settings.key_cache_seconds,
        retention=timedelta(days=settings.retention_days),
    )
