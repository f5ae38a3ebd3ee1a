"""The few pieces where the blocking client is more than the async one without ``await``.

``_sync.py`` is generated from ``_async.py`` by renaming tokens (unasync, driven by
``scripts/gen_sync_client.py``). What cannot be a rename lives here as a pair of
names, the async one used in ``_async.py`` and the blocking one it is renamed to:

- ``AsyncHold`` / ``Hold``: the blocking client yields the engine's own ``Hold``,
  so a hold looks the same whether the quota is embedded or behind HTTP.
- ``shielded`` / ``unshielded``: an async cleanup runs shielded from cancellation,
  so a cancelled task still frees its hold or slot instead of keeping it until the
  TTL runs out; blocking code cannot be cancelled halfway, so it needs no shield.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import Protocol

import anyio

from tokenquota.domain.decisions import Decision
from tokenquota.domain.holds import Reservation
from tokenquota.domain.views import Hold

__all__ = ["AsyncHold", "Hold", "shielded", "unshielded"]


class AsyncCommitter(Protocol):
    """What an ``AsyncHold`` commits through: ``AsyncClient``, without importing it."""

    async def commit(
        self,
        reservation_id: str,
        amounts: Mapping[str, object] | None = None,
        **metric_amounts: object,
    ) -> Decision: ...


class AsyncHold:
    """A live reservation inside ``AsyncClient.reservation``; commit it with the real usage."""

    def __init__(self, client: AsyncCommitter, reservation: Reservation) -> None:
        self.client = client
        self.reservation = reservation
        self.result: Decision | None = None

    @property
    def id(self) -> str:
        return self.reservation.id

    async def commit(
        self, amounts: Mapping[str, object] | None = None, **metric_amounts: object
    ) -> Decision:
        self.result = await self.client.commit(self.id, amounts, **metric_amounts)
        return self.result


def shielded() -> anyio.CancelScope:
    return anyio.CancelScope(shield=True)


def unshielded() -> nullcontext[None]:
    return nullcontext()
