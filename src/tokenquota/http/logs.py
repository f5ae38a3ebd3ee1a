"""Structured logs: a request id per request, one line per request and per decision.

Two loggers carry them, ``tokenquota.access`` (requests) and
``tokenquota.decisions`` (decision outcomes), at INFO. ``serve`` turns them on
with ``--access-log`` (docs/operations.md); a process that embeds the app
decides for itself through the logging module. Nothing is gathered for a line
unless its logger would write it, since the hot path pays for every field.

A line never holds a presented key, a secret or a webhook secret: only the
key's id, which the operator also sees in ``tokenquota keys list``.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import re
import secrets
from datetime import UTC, datetime
from typing import Any, Final, Literal

from uvicorn.config import LOGGING_CONFIG

from tokenquota.domain.decisions import Decision

LogFormat = Literal["json", "text"]

ACCESS: Final = logging.getLogger("tokenquota.access")
DECISIONS: Final = logging.getLogger("tokenquota.decisions")

# Where the request's log context lives in the ASGI scope: the same dict reaches
# the Door, the fast path, Authenticate and every route.
SCOPE_KEY: Final = "tokenquota.request"
HEADER: Final = b"x-request-id"
MAX_REQUEST_ID: Final = 128
# What a caller's id may hold: enough for UUIDs, trace ids and "svc-123.4:5",
# nothing a log reader or a terminal could take for structure or control.
_SAFE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,%d}" % MAX_REQUEST_ID)
# A new id is this process's random half and a count: 32 hex digits, unique
# across workers and restarts without a system call per request (os.urandom
# was the largest of the Door's additions, about 1 us a request).
_PROCESS_PART: Final = secrets.token_hex(8)
_NEXT = itertools.count(1).__next__  # atomic under the GIL: threads may share it


class RequestLog:
    """What one request's lines say besides what the Door sees itself."""

    __slots__ = ("key_id", "request_id", "subject")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.key_id: str | None = None
        self.subject: str | None = None


def request_id_from(value: bytes | None) -> str:
    """The caller's ``X-Request-ID`` when it is short and plain, else a new one.

    A refused id is replaced rather than answered with an error: the header is a
    tracing aid, and a request must not fail for it.
    """
    if value is not None and _SAFE_ID.fullmatch(value):
        return value.decode("ascii")
    return f"{_PROCESS_PART}{_NEXT() & 0xFFFF_FFFF_FFFF_FFFF:016x}"


def of(scope: Any) -> RequestLog | None:
    """The request's log context, when the Door made one (not for lifespan or tests
    that call a route without it)."""
    info: RequestLog | None = scope.get(SCOPE_KEY)
    return info


def seen_key(scope: Any, key_id: str) -> None:
    """Record which key the caller authenticated with (its id, never the key)."""
    info = of(scope)
    if info is not None:
        info.key_id = key_id


def request(info: RequestLog, method: str, route: str, status: int, seconds: float) -> None:
    """The request's line, once it is answered."""
    ACCESS.info(
        "request",
        extra={
            "fields": {
                "request_id": info.request_id,
                "method": method,
                "path": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "key_id": info.key_id,
                "subject": info.subject,
            }
        },
    )


def decision(scope: Any, operation: str, decision: Decision) -> None:
    """The decision's line; the subject is also remembered for the request's line."""
    info = of(scope)
    if info is not None:
        info.subject = decision.subject
    if not DECISIONS.isEnabledFor(logging.INFO):
        return
    DECISIONS.info(
        "decision",
        extra={
            "fields": {
                "request_id": info.request_id if info is not None else None,
                "key_id": info.key_id if info is not None else None,
                "operation": operation,
                "subject": decision.subject,
                "mode": decision.mode.value,
                "outcome": "allowed" if decision.allowed else "denied",
                "reason": decision.reason,
                "blocking": len(decision.blocked_by) + len(decision.blocked_outside),
                "shadow_blocked": len(decision.shadow_blocked),
                "failed_open": bool(decision.failed_open),
            }
        },
    )


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,  # which worker, under serve --workers N
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger message key=value ...``, for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        text = f"{self.formatTime(record)} {record.levelname} {record.name} {record.getMessage()}"
        if isinstance(fields, dict):
            text += "".join(
                f" {k}={json.dumps(v) if isinstance(v, str) and (' ' in v or not v) else v}"
                for k, v in fields.items()
                if v is not None
            )
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def logging_config(log_format: LogFormat, access_log: bool) -> dict[str, Any]:
    """uvicorn's logging configuration, with every line in ``log_format`` and the
    tokenquota loggers added; applied by uvicorn in the server and in each worker.

    uvicorn's own access log stays off: ``tokenquota.access`` replaces it, with
    the route template, the request id and the key id it cannot know.
    """
    config = copy.deepcopy(LOGGING_CONFIG)
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    name = f"{__name__}.{formatter.__name__}"
    config["formatters"] = {"tokenquota": {"()": name}}
    config["handlers"] = {
        "default": {
            "formatter": "tokenquota",
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
        }
    }
    level = "INFO" if access_log else "WARNING"
    config["loggers"] = {
        "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO"},
        "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        "tokenquota": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "tokenquota.access": {"level": level},
        "tokenquota.decisions": {"level": level},
    }
    return config
