"""HTTP edges every surface shares: body caps, 405 Allow, documented errors."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.api.conftest import Api

FIVE_MB = 5 * 1024 * 1024


def streamed(total: int = FIVE_MB, chunk: int = 64 * 1024) -> Iterator[bytes]:
    """A body httpx sends chunked: no Content-Length tells the server its size."""
    sent = 0
    while sent < total:
        yield b"x" * chunk
        sent += chunk


# (method, path, how the surface shapes an error)
BODY_ROUTES = [
    ("POST", "/v1/consume", "native"),
    ("POST", "/v1/reservations", "native"),
    ("PUT", "/v1/subjects/user:alice/limits", "native"),
    ("POST", "/api/v2/quotas/", "datarobot"),
    ("POST", "/api/chat-quota/set_quota/", "waldur"),
    ("POST", "/assistant/ai-chat/usage", "bokamera"),
]


def assert_shape(response: httpx.Response, shape: str) -> None:
    body = response.json()
    if shape == "native":
        assert body["error"]["code"] == "payload_too_large", body
    elif shape == "datarobot":
        assert set(body) == {"message"}, body
    elif shape == "waldur":
        assert set(body) == {"detail"}, body
    else:
        assert set(body) == {"ResponseStatus"}, body


@pytest.mark.parametrize(("method", "path", "shape"), BODY_ROUTES)
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
def test_an_oversized_body_is_413_with_or_without_content_length(
    api: Api, admin: httpx.Client, method: str, path: str, shape: str, declared: bool
) -> None:
    headers = {"content-type": "application/json"}
    content = b"x" * FIVE_MB if declared else streamed()
    response = admin.request(method, path, content=content, headers=headers)
    assert response.status_code == 413, response.text
    if not declared:
        assert "content-length" not in response.request.headers
    assert_shape(response, shape)
    assert "262144" in response.text
    assert api.quota.events().total == 0


def test_a_streamed_body_under_the_cap_is_read_as_usual(api: Api, admin: httpx.Client) -> None:
    body = b'{"subject": "user:alice", "amounts": {"tokens": 7}}'
    response = admin.post(
        "/v1/consume",
        content=iter([body[:10], body[10:]]),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert "content-length" not in response.request.headers


def concrete(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "00000000-0000-4000-8000-000000000001", template)


def test_every_405_allows_every_method_its_path_takes(api: Api, admin: httpx.Client) -> None:
    paths = admin.get("/openapi.json").json()["paths"]
    checked = 0
    for template, operations in paths.items():
        takes = {m.upper() for m in operations}
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            if method in takes:
                continue
            response = admin.request(method, concrete(template))
            assert response.status_code == 405, (method, template, response.text)
            allowed = {m.strip() for m in response.headers["allow"].split(",")}
            assert allowed - {"HEAD"} == takes, (method, template, response.headers["allow"])
            checked += 1
    assert checked > 50
    native = admin.patch("/v1/reservations/r1")
    assert native.json()["error"]["code"] == "method_not_allowed"
    assert set(native.headers["allow"].split(", ")) >= {"GET", "DELETE"}


def test_413_is_documented_on_every_operation_with_a_body(admin: httpx.Client) -> None:
    document = admin.get("/openapi.json").json()
    with_body = [
        (path, method, operation)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    ]
    assert len(with_body) > 15
    for path, method, operation in with_body:
        documented = operation["responses"].get("413")
        assert documented is not None, (method, path)
        assert "max_body_bytes" in documented["description"]
        # The surface's own error shape, the one it documents for its 401.
        assert documented.get("content") == operation["responses"]["401"].get("content")


def test_a_repeated_commit_with_a_bad_body_is_422(api: Api, admin: httpx.Client) -> None:
    held = admin.post("/v1/reservations", json={"subject": "user:alice", "amounts": {"tokens": 5}})
    assert held.status_code == 201, held.text
    url = f"/v1/reservations/{held.json()['reservation']['id']}/commit"
    first = admin.post(url, json={"amounts": {"tokens": 4}})
    assert first.status_code == 200, first.text
    bad = admin.post(url, json={"amounts": {"tokens": -1}})
    assert bad.status_code == 422, bad.text
    assert bad.json()["error"]["details"]["field"] == "amounts.tokens"
    again = admin.post(url, json={"amounts": {"tokens": 4}})
    assert again.json() == {**first.json(), "replayed": True}
