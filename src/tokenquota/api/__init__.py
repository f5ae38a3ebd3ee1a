"""The HTTP service: ``create_app(settings)``."""

from tokenquota.api.app import app_from_env, create_app

__all__ = ["app_from_env", "create_app"]
