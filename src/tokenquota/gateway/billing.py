"""What a gateway call holds while it runs, and what it is charged when it ends.

Before the upstream is called: a concurrency lease, then a reservation of the
prompt's tokens plus the completion's cap (and their price in credits), each on
the paying subject, every ancestor and the upstream's resource when a resource
quota exists for it; all through the engine's public API, so each is atomic on
every backend. Either refusal gives back what was taken and is the call's 429.

When the call ends, ``settle`` commits what the upstream reported (or, for a
stream cut short, what was streamed), with the model and the price on the ledger
event, then gives the lease back. Committed amounts never exceed the
reservation when the upstream honours ``max_tokens`` (which the gateway always
sends), so a budget is never overspent, whatever the number of replicas. A hold
that is never settled (the process died) lapses by itself after ``ttl``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final

from tokenquota.domain.decisions import Decision
from tokenquota.domain.errors import Conflict, NotFound
from tokenquota.domain.prices import TAG_UPSTREAM, Price, PriceTable
from tokenquota.domain.subjects import SubjectRef
from tokenquota.engine import Quota
from tokenquota.http.capacity import Threads

RESOURCE_CACHE_SECONDS: Final = 5.0


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int


@dataclass
class Held:
    """One admitted call's lease and reservation, until ``settle`` ends them."""

    subject: SubjectRef
    resource: SubjectRef | None
    model: str  # as the caller named it
    upstream: str
    price_names: tuple[str, ...]
    lease_id: str
    reservation_id: str
    decision: Decision
    settled: bool = field(default=False)


class Billing:
    def __init__(self, quota: Quota, lane: Threads, prices: PriceTable, ttl: float) -> None:
        self.quota = quota
        self.lane = lane
        self.prices = prices
        self.ttl = timedelta(seconds=ttl)
        self._resources: dict[SubjectRef, tuple[float, bool]] = {}

    def price(self, names: tuple[str, ...]) -> Price | None:
        return self.prices.at(names, self.quota.clock.now()) if self.prices else None

    def _has_quota(self, resource: SubjectRef) -> bool:
        """Whether a resource quota exists for ``resource`` (cached a few seconds)."""
        now = time.monotonic()
        cached = self._resources.get(resource)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            self.quota.get_resource_quota(resource)
            found = True
        except NotFound:
            found = False
        self._resources[resource] = (now + RESOURCE_CACHE_SECONDS, found)
        return found

    def amounts(self, usage: Usage, price: Price | None) -> dict[str, object]:
        out: dict[str, object] = {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "requests": 1,
        }
        if price is not None:
            out["credits"] = price.credits(usage.input_tokens, usage.output_tokens)
        return out

    async def hold(
        self,
        subject: SubjectRef,
        resource: SubjectRef,
        estimate: Usage,
        *,
        model: str,
        upstream: str,
        price_names: tuple[str, ...],
    ) -> Held | Decision:
        """The lease and the reservation, or the decision that refused one of them."""

        def take() -> Held | Decision:
            charged = resource if self._has_quota(resource) else None
            acquired = self.quota.acquire(subject, ttl=self.ttl, resource=charged)
            if acquired.lease is None:
                return acquired.decision
            try:
                amounts = self.amounts(estimate, self.price(price_names))
                reserved = self.quota.reserve(subject, amounts, ttl=self.ttl, resource=charged)
            except BaseException:
                self.quota.release_lease(acquired.lease.id)
                raise
            if reserved.reservation is None:
                self.quota.release_lease(acquired.lease.id)
                return reserved.decision
            return Held(
                subject,
                charged,
                model,
                upstream,
                price_names,
                acquired.lease.id,
                reserved.reservation.id,
                reserved.decision,
            )

        return await self.lane.run(take)

    async def settle(self, held: Held, usage: Usage | None) -> None:
        """Commit ``usage`` (None: the call used nothing, release it) and end the lease.

        Runs to its end even when the request is cancelled: the lane's thread call
        cannot be interrupted once started, and callers shield the await.
        """
        if held.settled:
            return
        held.settled = True

        def end() -> None:
            try:
                if usage is None:
                    self.quota.release(held.reservation_id)
                else:
                    self._commit(held, usage)
            finally:
                self.quota.release_lease(held.lease_id)

        await self.lane.run(end)

    def _commit(self, held: Held, usage: Usage) -> None:
        price = self.price(held.price_names)
        tags = {TAG_UPSTREAM: held.upstream, **(price.tags() if price else {})}
        amounts = self.amounts(usage, price)
        try:
            self.quota.commit_usage(held.reservation_id, amounts, model=held.model, tags=tags)
        except Conflict:
            # The hold lapsed first (a call longer than the ttl): the usage happened all
            # the same, so it is recorded as such.
            self.quota.consume(
                held.subject,
                amounts,
                mode="record",
                model=held.model,
                tags=tags,
                resource=held.resource,
                idempotency_key=f"gateway:{held.reservation_id}",
            )
