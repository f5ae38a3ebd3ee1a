"""What every compatibility surface shares: errors leave in the product's own shape."""

from __future__ import annotations

import httpx

from tests.api.conftest import Api


def test_oversized_bodies_are_413_in_the_surface_shape(api: Api, admin: httpx.Client) -> None:
    big = b"x" * 300_000
    headers = {"content-type": "application/json"}
    captain = admin.post("/v1/quotas", content=big, headers=headers)
    assert captain.status_code == 413
    assert set(captain.json()) == {"message"}
    native = admin.post("/v1/consume", content=big, headers=headers)
    assert native.status_code == 413
    assert native.json()["error"]["code"] == "payload_too_large"


def test_surface_prefixes_claim_whole_path_segments(api: Api, admin: httpx.Client) -> None:
    # /v1/quotasX is not Captain Data's: the native 404 shape answers.
    response = admin.get("/v1/quotasX")
    assert response.status_code == 404
    assert "error" in response.json()
