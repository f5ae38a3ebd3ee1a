"""Webhook endpoints and their deliveries: what the API and the CLI manage (docs/webhooks.md).

The signing secret of an endpoint is never stored in clear. Without a secret of
the user's, it is derived from the server's key and the endpoint's id
(``domain.webhooks.derive_secret``): nothing to store, the same on every
replica. A secret the user brings (to keep a receiver's existing one) is kept
sealed with AES-GCM under a key derived from the server's key, bound to the
endpoint's id, so a copied database row opens nowhere else. The server key is
the ``webhook_key`` setting (``TOKENQUOTA_WEBHOOK_KEY``); without it no
endpoint can be made and no delivery is signed (a 409 saying how to set it),
rather than signing with a key anyone could guess.

A member's endpoint belongs to its subject (``owner``): it sees only its own
endpoints and their deliveries, and gets only events of its subtree (the
worker checks, engine/delivery.py). Admin and staff see every endpoint.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from datetime import datetime
from typing import TYPE_CHECKING, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tokenquota.domain.alerts import AlertEvent
from tokenquota.domain.errors import Conflict, NotFound, ValidationError
from tokenquota.domain.keys import ApiKey, Role
from tokenquota.domain.webhooks import (
    ENDPOINT_PREFIX,
    Delivery,
    Endpoint,
    derive_secret,
    parse_delivery_id,
    parse_description,
    parse_endpoint_id,
    parse_kinds,
    parse_secret,
    parse_url,
)
from tokenquota.engine import inputs
from tokenquota.storage.webhooks import WebhookTables, webhook_tables

if TYPE_CHECKING:
    from tokenquota.engine.quota import Quota

MIN_KEY_LENGTH: Final = 16
SEALED_PREFIX: Final = "v1."
KEY_HELP: Final = (
    "set TOKENQUOTA_WEBHOOK_KEY (or webhook_key in the TOML file) to the same random "
    "string of at least 16 characters on every replica, e.g. `openssl rand -hex 32`, "
    "then restart"
)


class WebhookKeyUnset(Conflict):
    """The server has no webhook key: it can neither derive nor seal a signing secret."""

    code = "webhook_key_unset"


class SecretUnavailable(Exception):
    """A sealed secret that this server key cannot open (the key changed)."""


class ServerKey:
    """The server's webhook key: derives endpoint secrets and seals users' own."""

    def __init__(self, key: str) -> None:
        if len(key) < MIN_KEY_LENGTH:
            raise ValidationError("webhook_key", f"must be at least {MIN_KEY_LENGTH} characters")
        self._key = key.encode()
        # A key of its own for sealing: the derived secrets and the seal never share one.
        self._aead = AESGCM(
            hmac.new(self._key, b"tokenquota-webhook-seal", hashlib.sha256).digest()
        )

    def seal(self, secret: str, endpoint_id: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, secret.encode(), endpoint_id.encode())
        return SEALED_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def secret_of(self, endpoint: Endpoint) -> str:
        """The endpoint's signing secret; SecretUnavailable if its seal does not open."""
        if endpoint.sealed is None:
            return derive_secret(self._key, endpoint.id)
        if not endpoint.sealed.startswith(SEALED_PREFIX):
            raise SecretUnavailable("the stored secret is in an unknown form")
        try:
            raw = base64.urlsafe_b64decode(endpoint.sealed[len(SEALED_PREFIX) :])
            return self._aead.decrypt(raw[:12], raw[12:], endpoint.id.encode()).decode()
        except (InvalidTag, ValueError) as exc:
            raise SecretUnavailable(
                "the endpoint's own secret does not open under this server key "
                "(was webhook_key changed?)"
            ) from exc


def server_key(key: str | None) -> ServerKey | None:
    return None if not key else ServerKey(key)


class Webhooks:
    """Endpoints and deliveries, seen as one caller may (``owner``: a member's subject)."""

    def __init__(self, quota: Quota, key: ServerKey | None) -> None:
        self.quota = quota
        self.key = key
        self.tables: WebhookTables = webhook_tables(quota.store)

    def _key(self) -> ServerKey:
        if self.key is None:
            raise WebhookKeyUnset(f"webhooks need a server key: {KEY_HELP}")
        return self.key

    def create(
        self,
        url: object,
        *,
        events: object = None,
        description: object = None,
        secret: object = None,
        owner: str | None = None,
        actor: str = "library",
    ) -> tuple[Endpoint, str]:
        """A new endpoint, enabled, and its signing secret (shown this once and on request).

        Audited as ``webhook.create`` under its owner's subject (``webhooks/<id>`` for
        staff's), like every change below; an entry never holds a secret."""
        parsed_url = parse_url(url)
        kinds = parse_kinds(events)
        text = parse_description(description)
        own = parse_secret(secret)
        key = self._key()
        endpoint_id = ENDPOINT_PREFIX + secrets.token_hex(12)
        endpoint = Endpoint(
            id=endpoint_id,
            url=parsed_url,
            events=kinds,
            owner=owner,
            description=text,
            created_at=self.quota.clock.now(),
            disabled_at=None,
            sealed=None if own is None else key.seal(own, endpoint_id),
        )
        self.tables.add_endpoint(endpoint, actor=actor)
        return endpoint, key.secret_of(endpoint)

    def endpoints(self, *, owner: str | None = None) -> list[Endpoint]:
        return self.tables.endpoints(owner=owner)

    def get(self, endpoint_id: object, *, owner: str | None = None) -> Endpoint:
        """The endpoint; NotFound also when it is not the member's own (its existence is not
        the member's to learn)."""
        found = self.tables.endpoint(parse_endpoint_id(endpoint_id))
        if found is None or (owner is not None and found.owner != owner):
            raise NotFound(f"no webhook endpoint {endpoint_id}")
        return found

    def secret(self, endpoint_id: object, *, owner: str | None = None) -> str:
        endpoint = self.get(endpoint_id, owner=owner)
        try:
            return self._key().secret_of(endpoint)
        except SecretUnavailable as exc:
            raise Conflict(str(exc)) from None

    def set_secret(
        self,
        endpoint_id: object,
        secret: object = None,
        *,
        owner: str | None = None,
        actor: str = "library",
    ) -> tuple[Endpoint, str]:
        """Give an endpoint a new signing secret and answer it: ``secret`` (the user's own,
        as at creation), or without one a fresh random one (a rotation of this endpoint
        alone; a new server key rotates every derived one). Kept sealed either way."""
        own = parse_secret(secret)
        key = self._key()
        endpoint = self.get(endpoint_id, owner=owner)
        value = own if own is not None else "whsec_" + secrets.token_hex(32)
        changed = self.tables.set_sealed(
            endpoint.id, key.seal(value, endpoint.id), actor=actor, now=self.quota.clock.now()
        )
        if changed is None:
            raise NotFound(f"no webhook endpoint {endpoint_id}")
        return changed, value

    def set_enabled(
        self,
        endpoint_id: object,
        enabled: object,
        *,
        owner: str | None = None,
        actor: str = "library",
    ) -> Endpoint:
        if not isinstance(enabled, bool):
            raise ValidationError("enabled", "must be true or false")
        endpoint = self.get(endpoint_id, owner=owner)
        now = self.quota.clock.now()
        at: datetime | None = None if enabled else (endpoint.disabled_at or now)
        changed = self.tables.set_disabled(endpoint.id, at, actor=actor, now=now)
        if changed is None:
            raise NotFound(f"no webhook endpoint {endpoint_id}")
        return changed

    def remove(
        self, endpoint_id: object, *, owner: str | None = None, actor: str = "library"
    ) -> None:
        endpoint = self.get(endpoint_id, owner=owner)
        if not self.tables.remove_endpoint(endpoint.id, actor=actor, now=self.quota.clock.now()):
            raise NotFound(f"no webhook endpoint {endpoint_id}")

    def deliveries(
        self, endpoint_id: object, *, offset: int = 0, limit: int = 100, owner: str | None = None
    ) -> tuple[list[Delivery], int]:
        inputs.offset(offset)  # the paging every list of the engine checks
        inputs.limit(limit)
        endpoint = self.get(endpoint_id, owner=owner)
        return self.tables.deliveries(endpoint.id, offset=offset, limit=limit)

    def subject_alerts(
        self, subject: str, *, offset: int = 0, limit: int = 100, owner: str | None = None
    ) -> tuple[list[tuple[AlertEvent, list[Delivery]]], int]:
        """A subject's alert events, newest first, each with its deliveries.

        Recorded whether or not any endpoint exists (and with no server key), so
        this needs neither. ``owner``: a member sees only the deliveries to its
        own endpoints; the caller has checked it may read ``subject`` at all.
        """
        inputs.offset(offset)  # the paging every list of the engine checks
        inputs.limit(limit)
        events, total = self.tables.subject_alerts(subject, offset=offset, limit=limit)
        deliveries = self.tables.event_deliveries([e.id for e in events])
        if owner is not None:
            own = {e.id for e in self.tables.endpoints(owner=owner)}
            deliveries = [d for d in deliveries if d.endpoint_id in own]
        by_event: dict[int, list[Delivery]] = {}
        for delivery in deliveries:
            by_event.setdefault(delivery.event_id, []).append(delivery)
        return [(e, by_event.get(e.id, [])) for e in events], total

    def delivery(self, delivery_id: object, *, owner: str | None = None) -> Delivery:
        number = parse_delivery_id(delivery_id)
        found = self.tables.delivery(number)
        if found is not None and owner is not None:
            endpoint = self.tables.endpoint(found.endpoint_id)
            if endpoint is None or endpoint.owner != owner:
                found = None
        if found is None:
            raise NotFound(f"no delivery {delivery_id}")
        return found

    def redeliver(self, delivery_id: object, *, owner: str | None = None) -> Delivery:
        """Send a delivery again (a dead letter, or one delivered): pending, due now, with a
        fresh round of attempts. The worker sends it; this never does."""
        found = self.delivery(delivery_id, owner=owner)
        again = self.tables.redeliver(found.id, self.quota.clock.now())
        if again is None:
            raise NotFound(f"no delivery {delivery_id}")
        return again


def deliveries_seen_by(caller: ApiKey) -> str | None:
    """Whose deliveries ``caller`` may see beside an alert (``Webhooks.subject_alerts``'s
    ``owner``): None for admin and staff (all), a member's own endpoints', and none
    for a service key, which owns no endpoint."""
    if caller.role is Role.MEMBER:
        return str(caller.subject)
    if caller.role is Role.SERVICE:
        return ""
    return None


def open_webhooks(quota: Quota, key: ServerKey | None) -> Webhooks | None:
    """The webhooks of ``quota``'s store; None for a store of the caller's own making."""
    try:
        return Webhooks(quota, key)
    except TypeError:
        return None


__all__ = [
    "SecretUnavailable",
    "ServerKey",
    "WebhookKeyUnset",
    "Webhooks",
    "deliveries_seen_by",
    "open_webhooks",
    "server_key",
]
