"""What the clients make of an answer, or of no answer at all.

``_protocol`` builds each request as a ``Call``; once it is sent, the two
clients hand the response (or the transport's failure) here: an error answer
becomes the library's exception for its code, a denied consume
``QuotaExceeded`` (or a refused hold a value), no answer ``ServiceUnreachable``,
and a streamed export whole lines.
"""

from __future__ import annotations

from typing import Any, TypeVar

import httpx

from tokenquota.client._protocol import Call
from tokenquota.domain.decisions import QuotaExceeded
from tokenquota.domain.errors import TokenQuotaError
from tokenquota.wire.errors import decode_error

T = TypeVar("T")


def finish(call: Call[T], response: httpx.Response) -> T:
    """Raise the library's error for an error answer, else parse it (the body is read)."""
    if response.is_error:
        error = error_from(response)
        if call.refused is not None and isinstance(error, QuotaExceeded):
            return call.refused(error.decision)
        raise error
    if response.status_code == 204 or not response.content:
        return call.parse(None)
    return call.parse(response.json())


def error_from(response: httpx.Response) -> TokenQuotaError:
    """The exception an error answer stands for (``wire.errors`` reads it)."""
    try:
        body = response.json()
    except ValueError:
        body = None  # not JSON (e.g. a proxy's HTML page): decided by the status alone
    return decode_error(response.status_code, body, response.text)


class ServiceUnreachable(TokenQuotaError):
    """The service gave no answer: refused connection, timeout, or a connection cut.

    ``maybe_applied`` is False only when no connection was made, so the request
    cannot have reached the service; otherwise a consume may have been counted,
    and the safe retry is the same call with the same ``idempotency_key``.
    The client never retries by itself (README.md in this folder).
    """

    code = "service_unreachable"
    status = 503

    def __init__(self, method: str, url: str, cause: httpx.TransportError) -> None:
        self.url = url
        self.maybe_applied = not isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout)
        hint = (
            "it may have been applied: retry with the same idempotency_key"
            if self.maybe_applied
            else "nothing was sent; is the service running at that address?"
        )
        reason = str(cause) or type(cause).__name__
        super().__init__(
            f"{method} {url} got no answer ({reason}); {hint}",
            details={"url": url, "maybe_applied": self.maybe_applied},
        )


def unreachable(
    base_url: httpx.URL, call: Call[Any], cause: httpx.TransportError
) -> ServiceUnreachable:
    return ServiceUnreachable(call.method, str(base_url.join(call.path)), cause)


class LineSplitter:
    """Cuts streamed text into lines that keep their ending, like iterating a file.

    Only "\n" ends a line, so a CSV record's "\r\n" stays whole and a quoted
    field holding a newline survives for ``csv.reader``.
    """

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str) -> list[str]:
        *lines, self._pending = (self._pending + text).split("\n")
        return [line + "\n" for line in lines]

    def end(self) -> list[str]:
        rest, self._pending = self._pending, ""
        return [rest] if rest else []
