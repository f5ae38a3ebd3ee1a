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

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from tokenquota.api.dashboard import charts
from tokenquota.api.dashboard.session import forget, keep, key_of, signed_in
from tokenquota.api.routes.insights import ranked
from tokenquota.domain.errors import NotFound, TokenQuotaError
from tokenquota.domain.keys import ApiKey
from tokenquota.domain.ledger import AuditEntry
from tokenquota.domain.limits import LimitKey
from tokenquota.domain.metrics import COUNTERS
from tokenquota.domain.subjects import Subject, SubjectRef
from tokenquota.domain.views import Granularity
from tokenquota.domain.webhooks import event_body
from tokenquota.domain.windows import Calendar, calendar_period
from tokenquota.engine import Quota
from tokenquota.engine.webhooks import Webhooks, deliveries_seen_by
from tokenquota.http.auth import WRITERS, in_scope, require_read
from tokenquota.http.capacity import one_heavy_read, runs_on

CSS: Final = (Path(__file__).parent / "static" / "dashboard.css").read_bytes()
METRICS: Final = tuple(m.value for m in COUNTERS)
WINDOWS: Final = ("hour", "day", "week", "month", "year", "rolling:24h", "rolling:30d", "total")
HISTORY_SPAN: Final = {Granularity.HOUR: timedelta(hours=48), Granularity.DAY: timedelta(days=30)}
TOP_ROWS: Final = 20
AUDIT_ROWS: Final = 50
ALERT_ROWS: Final = 20
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
_templates.filters["when"] = charts.when


def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _templates.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def _to_login() -> Response:
    return RedirectResponse("/dashboard/login", status_code=303, headers=HEADERS)


def _failed(viewer: ApiKey, error: TokenQuotaError) -> HTMLResponse:
    return page("error.html", error.status, viewer=viewer, error=error)


async def stylesheet(request: Request) -> Response:
    return Response(CSS, media_type="text/css", headers={"Cache-Control": "max-age=3600"})


async def login_form(request: Request) -> Response:
    if await signed_in(request) is not None:
        return RedirectResponse("/dashboard", status_code=303, headers=HEADERS)
    return page("login.html", viewer=None, failed=False)


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


async def logout(request: Request) -> Response:
    response = _to_login()
    forget(response, request)
    return response


async def overview(request: Request) -> Response:
    """Top consumers: of everyone, of one kind, or of a parent's children."""
    viewer = await signed_in(request)
    if viewer is None:
        return _to_login()
    q = request.query_params
    async with one_heavy_read(viewer):
        return await _on_reads(_overview)(
            viewer,
            request.app.state.quota,
            q.get("metric", "tokens"),
            q.get("window", "month"),
            q.get("kind", ""),
            q.get("parent", ""),
        )


async def subject(request: Request) -> Response:
    """One subject: a gauge per effective limit, its children, its history, its audit."""
    viewer = await signed_in(request)
    if viewer is None:
        return _to_login()
    q = request.query_params
    async with one_heavy_read(viewer):
        return await _on_reads(_subject)(
            viewer,
            request.app.state.quota,
            request.app.state.webhooks,
            request.path_params["ref"],
            q.get("metric", "tokens"),
            q.get("window", "month"),
            q.get("granularity", "day"),
        )


def _overview(
    viewer: ApiKey, quota: Quota, metric: str, window: str, kind: str, parent: str
) -> Response:
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
        tz=quota.tz,
        top=top,
        bars=charts.bars(top.consumers),
        form={"metric": metric, "window": window, "kind": kind, "parent": parent},
        metrics=METRICS,
        windows=WINDOWS,
        bar_width=charts.BAR_WIDTH,
    )


def _subject(
    viewer: ApiKey,
    quota: Quota,
    webhooks: Webhooks | None,
    ref: str,
    metric: str,
    window: str,
    granularity: str,
) -> Response:
    try:
        return _subject_page(viewer, quota, webhooks, ref, metric, window, granularity)
    except TokenQuotaError as error:
        return _failed(viewer, error)


def _subject_page(
    viewer: ApiKey,
    quota: Quota,
    webhooks: Webhooks | None,
    ref: str,
    metric: str,
    window: str,
    granularity: str,
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
    alerts = _latest_alerts(webhooks, viewer, target) if webhooks is not None else None
    parents = [p for p in (known.parents if known else ()) if in_scope(quota, viewer, p)]
    return page(
        "subject.html",
        viewer=viewer,
        tz=quota.tz,
        ref=str(target),
        known=known,
        parents=parents,
        gauges=gauges,
        children=children,
        child_bars=charts.bars(children.consumers),
        chart=charts.stacked(metric, points, slots),
        granularity=grain.value,
        audit=audit,
        alerts=alerts,
        form={"metric": metric, "window": window, "granularity": grain.value},
        metrics=METRICS,
        windows=WINDOWS,
        gauge_width=charts.GAUGE_WIDTH,
        bar_width=charts.BAR_WIDTH,
        chart_width=charts.CHART_WIDTH,
        chart_height=charts.CHART_HEIGHT,
    )


def _latest_changes(quota: Quota, ref: SubjectRef) -> list[AuditEntry]:
    """The newest ``AUDIT_ROWS`` changes, newest first (the log pages oldest first)."""
    total = quota.audit(subject=str(ref), limit=1).total
    offset = max(total - AUDIT_ROWS, 0)
    return quota.audit(subject=str(ref), offset=offset, limit=AUDIT_ROWS).items[::-1]


def _latest_alerts(webhooks: Webhooks, viewer: ApiKey, ref: SubjectRef) -> list[dict[str, Any]]:
    """The newest ``ALERT_ROWS`` alert events, as /v1/subjects/{ref}/alerts answers them,
    each with how many of its deliveries stand in each status."""
    found, _ = webhooks.subject_alerts(str(ref), limit=ALERT_ROWS, owner=deliveries_seen_by(viewer))
    rows = []
    for event, deliveries in found:
        statuses = Counter(d.status.value for d in deliveries)
        rows.append(
            {
                "at": event.at,
                **event_body(event)["data"],
                "type": event.kind.value,
                "deliveries": ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())),
            }
        )
    return rows


def _known(quota: Quota, ref: SubjectRef) -> Subject | None:
    """The registered subject; None for one only ever named in a consume."""
    try:
        return quota.get_subject(ref)
    except NotFound:
        return None


_on_reads = runs_on("reads")

# Plain Starlette routes, not API operations: they answer HTML to a browser holding the
# session cookie, are not in the OpenAPI document and are not /v1's header-keyed calls
# (tests/api/test_isolation_matrix.py walks those; tests/api/test_dashboard*.py these).
routes = [
    Route("/dashboard", overview, methods=["GET"]),
    Route("/dashboard/login", login_form, methods=["GET"]),
    Route("/dashboard/login", login, methods=["POST"]),
    Route("/dashboard/logout", logout, methods=["POST"]),
    Route("/dashboard/subjects/{ref}", subject, methods=["GET"]),
    Route("/dashboard/static/dashboard.css", stylesheet, methods=["GET"]),
]
