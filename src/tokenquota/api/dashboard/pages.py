"""The dashboard's pages: top consumers, one subject, and signing in and out.

Server-rendered from Jinja2 templates with inline SVG charts: no script, no
build step and nothing fetched from another host (the machine may have no
internet). Every page reads through the engine with the rules of /v1: the
key in the session cookie (session.py) is checked as /v1 checks a key, a
member sees only its own subtree, and the audit trail is shown to the roles
that may read it over /v1 (admin and staff). Handlers that read the store
run on the read threads (``http.capacity``), each page counted as one heavy
read of its key, as the history and ranking it draws are over /v1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from tokenquota.api.dashboard import charts
from tokenquota.api.dashboard.session import Viewer, forget, keep, key_of
from tokenquota.api.routes.insights import ranked
from tokenquota.domain.errors import NotFound, TokenQuotaError
from tokenquota.domain.keys import ApiKey
from tokenquota.domain.ledger import AuditEntry
from tokenquota.domain.limits import LimitKey
from tokenquota.domain.metrics import COUNTERS
from tokenquota.domain.subjects import Subject, SubjectRef
from tokenquota.domain.views import Granularity
from tokenquota.domain.windows import Calendar, calendar_period
from tokenquota.engine import Quota
from tokenquota.http.auth import WRITERS, QuotaDep, in_scope, require_read
from tokenquota.http.capacity import _heavy_read, runs_on

router = APIRouter(include_in_schema=False)

CSS: Final = (Path(__file__).parent / "static" / "dashboard.css").read_bytes()
METRICS: Final = tuple(m.value for m in COUNTERS)
WINDOWS: Final = ("hour", "day", "week", "month", "year", "rolling:24h", "rolling:30d", "total")
HISTORY_SPAN: Final = {Granularity.HOUR: timedelta(hours=48), Granularity.DAY: timedelta(days=30)}
TOP_ROWS: Final = 20
AUDIT_ROWS: Final = 50
# Pages hold usage data: never cached, never framed, nothing loaded but our own CSS.
HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

_templates = Environment(
    loader=PackageLoader("tokenquota.api.dashboard", "templates"),
    autoescape=select_autoescape(default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters["show"] = charts.show


async def _heavy(viewer: Viewer) -> AsyncIterator[None]:
    """One heavy read of the signed-in key while a page renders (none when signed out)."""
    if viewer is None:
        yield
        return
    async for _ in _heavy_read(viewer):
        yield


Heavy = Annotated[None, Depends(_heavy, scope="request")]


def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _templates.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def _to_login() -> Response:
    return RedirectResponse("/dashboard/login", status_code=303, headers=HEADERS)


def _failed(viewer: ApiKey, error: TokenQuotaError) -> HTMLResponse:
    return page("error.html", error.status, viewer=viewer, error=error)


@router.get("/dashboard/static/dashboard.css")
async def stylesheet() -> Response:
    return Response(CSS, media_type="text/css", headers={"Cache-Control": "max-age=3600"})


@router.get("/dashboard/login")
async def login_form(viewer: Viewer) -> Response:
    if viewer is not None:
        return RedirectResponse("/dashboard", status_code=303, headers=HEADERS)
    return page("login.html", viewer=None, failed=False)


@router.post("/dashboard/login")
async def login(request: Request) -> Response:
    # Only from our own pages: a form on another site must not sign a browser in.
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.url.netloc:
        return page("login.html", 403, viewer=None, failed=True)
    form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=4)
    presented = (form.get("key") or [""])[0].strip()
    if await key_of(request, presented) is None:
        return page("login.html", 401, viewer=None, failed=True)
    response = RedirectResponse("/dashboard", status_code=303, headers=HEADERS)
    keep(response, request, presented)
    return response


@router.post("/dashboard/logout")
async def logout(request: Request) -> Response:
    response = _to_login()
    forget(response, request)
    return response


@router.get("/dashboard")
@runs_on("reads")
def overview(
    viewer: Viewer,
    quota: QuotaDep,
    _heavy: Heavy,
    metric: str = "tokens",
    window: str = "month",
    kind: str = "",
    parent: str = "",
) -> Response:
    """Top consumers: of everyone, of one kind, or of a parent's children."""
    if viewer is None:
        return _to_login()
    try:
        top = ranked(
            quota,
            viewer,
            metric,
            window=window,
            parent=parent or None,
            kind=kind or None,
            limit=TOP_ROWS,
        )
    except TokenQuotaError as error:
        return _failed(viewer, error)
    return page(
        "overview.html",
        viewer=viewer,
        top=top,
        bars=charts.bars(top.consumers),
        form={"metric": metric, "window": window, "kind": kind, "parent": parent},
        metrics=METRICS,
        windows=WINDOWS,
        bar_width=charts.BAR_WIDTH,
    )


@router.get("/dashboard/subjects/{ref}")
@runs_on("reads")
def subject(
    viewer: Viewer,
    quota: QuotaDep,
    _heavy: Heavy,
    ref: str,
    metric: str = "tokens",
    window: str = "month",
    granularity: str = "day",
) -> Response:
    """One subject: a gauge per effective limit, its children, its history, its audit."""
    if viewer is None:
        return _to_login()
    try:
        return _subject(viewer, quota, ref, metric, window, granularity)
    except TokenQuotaError as error:
        return _failed(viewer, error)


def _subject(
    viewer: ApiKey, quota: Quota, ref: str, metric: str, window: str, granularity: str
) -> Response:
    target = SubjectRef.parse(ref, "ref")
    require_read(quota, viewer, target)
    grain = Granularity.HOUR if granularity == "hour" else Granularity.DAY
    known = _known(quota, target)
    usage = quota.usage(target)
    hits = quota.shadow_hits(target)
    gauges = [
        charts.gauge(s, hits.get(str(LimitKey.parse(s.metric, s.window)), 0) if s.shadow else None)
        for s in usage.limits
        if s.subject == str(target)
    ]
    children = ranked(quota, viewer, metric, window=window, parent=str(target), limit=TOP_ROWS)
    unit = Calendar(grain.value)
    end = calendar_period(unit, quota.clock.now(), quota.tz)[1]
    start = calendar_period(unit, end - HISTORY_SPAN[grain], quota.tz)[0]
    points = quota.history(target, start=start, end=end, granularity=grain.value, group_by="model")
    slots = [start]
    while (following := calendar_period(unit, slots[-1], quota.tz)[1]) < end:
        slots.append(following)
    audit = _latest_changes(quota, target) if viewer.role in WRITERS else None
    parents = [p for p in (known.parents if known else ()) if in_scope(quota, viewer, p)]
    return page(
        "subject.html",
        viewer=viewer,
        ref=str(target),
        known=known,
        parents=parents,
        gauges=gauges,
        children=children,
        child_bars=charts.bars(children.consumers),
        chart=charts.stacked(metric, points, slots),
        granularity=grain.value,
        audit=audit,
        form={"metric": metric, "window": window, "granularity": grain.value},
        metrics=METRICS,
        windows=WINDOWS,
        gauge_width=charts.GAUGE_WIDTH,
        bar_width=charts.BAR_WIDTH,
        chart_width=charts.CHART_WIDTH,
        chart_height=charts.CHART_HEIGHT,
        query=urlencode,
    )


def _latest_changes(quota: Quota, ref: SubjectRef) -> list[AuditEntry]:
    """The newest ``AUDIT_ROWS`` changes, newest first (the log pages oldest first)."""
    total = quota.audit(subject=str(ref), limit=1).total
    offset = max(total - AUDIT_ROWS, 0)
    return quota.audit(subject=str(ref), offset=offset, limit=AUDIT_ROWS).items[::-1]


def _known(quota: Quota, ref: SubjectRef) -> Subject | None:
    """The registered subject; None for one only ever named in a consume."""
    try:
        return quota.get_subject(ref)
    except NotFound:
        return None
