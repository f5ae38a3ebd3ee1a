"""The compatibility surfaces are tested on the same live server as the native API."""

from tests.api.conftest import admin, api, make_api

__all__ = ["admin", "api", "make_api"]
