"""The tokenquota service over HTTP, with the same methods as the embedded library.

``AsyncClient`` for asyncio code, ``Client`` alongside for blocking code. Both
build their requests through ``_protocol`` and read their answers with the
decoders of ``tokenquota.wire`` (the routes encode with the same module), so
the two cannot drift apart; see README.md in this folder.
"""

from tokenquota.client._answers import ServiceUnreachable
from tokenquota.client._async import AsyncClient
from tokenquota.client._sync import Client
from tokenquota.client._webhooks import verify_webhook
from tokenquota.domain.decisions import QuotaExceeded
from tokenquota.domain.webhooks import SignatureError

__all__ = [
    "AsyncClient",
    "Client",
    "QuotaExceeded",
    "ServiceUnreachable",
    "SignatureError",
    "verify_webhook",
]
