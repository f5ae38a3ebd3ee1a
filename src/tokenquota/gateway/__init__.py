"""Gateway mode: an OpenAI-compatible proxy in front of model servers, within quota.

``routes`` is the surface under ``/openai/v1``; ``upstreams`` routes model names,
``tokens`` counts prompts offline, ``billing`` holds and settles each call's
budget through the engine, ``relay`` passes streams through, ``prices`` turns
tokens into credits and ``refusals`` speaks OpenAI's errors. docs/gateway.md.
"""

from tokenquota.gateway.refusals import render_error
from tokenquota.gateway.routes import PREFIX, SUBJECT_HEADER, close, router

__all__ = ["PREFIX", "SUBJECT_HEADER", "close", "render_error", "router"]
