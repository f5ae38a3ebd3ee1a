"""Reservations and leases as the API shows them, and the answers that hand them out."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tokenquota.domain.holds import HoldState, Lease, Reservation
from tokenquota.domain.subjects import SubjectRef
from tokenquota.domain.views import Acquired, Reserved
from tokenquota.wire.decisions import decode_decision
from tokenquota.wire.fields import iso, optional_ref, optional_time, ref_text, time
from tokenquota.wire.metrics import decode_amounts, encode_amounts


def encode_reservation(reservation: Reservation, now: datetime) -> dict[str, Any]:
    """``now`` decides whether a held reservation reads as "expired"."""
    expired = reservation.state is HoldState.HELD and now >= reservation.expires_at
    return {
        "id": reservation.id,
        "subject": str(reservation.subject),
        "amounts": encode_amounts(reservation.amounts),
        "created_at": reservation.created_at.isoformat(),
        "expires_at": reservation.expires_at.isoformat(),
        "state": "expired" if expired else reservation.state.value,
        "resource": ref_text(reservation.resource),
    }


def decode_reservation(data: Any) -> Reservation:
    """The wire leaves out ``charged`` (the ancestors: a member key may not see
    them) and the commit's decision, so those come back as ``()`` and None.
    "expired" is a hold past ``expires_at``, which the engine keeps as
    ``HoldState.HELD`` (``live(now)`` is False).
    """
    state = str(data["state"])
    return Reservation(
        id=str(data["id"]),
        subject=SubjectRef.parse(data["subject"]),
        charged=(),
        amounts=decode_amounts(data["amounts"]),
        created_at=time(data["created_at"]),
        expires_at=time(data["expires_at"]),
        state=HoldState.HELD if state == "expired" else HoldState(state),
        resource=optional_ref(data.get("resource")),
    )


def encode_lease(lease: Lease, now: datetime) -> dict[str, Any]:
    if lease.released_at is not None:
        state = "released"
    else:
        state = "held" if now < lease.expires_at else "expired"
    return {
        "id": lease.id,
        "subject": str(lease.subject),
        "created_at": lease.created_at.isoformat(),
        "expires_at": lease.expires_at.isoformat(),
        "state": state,
        "released_at": iso(lease.released_at),
        "resource": ref_text(lease.resource),
    }


def decode_lease(data: Any) -> Lease:
    """``charged`` is not sent, so it comes back as ``()``."""
    return Lease(
        id=str(data["id"]),
        subject=SubjectRef.parse(data["subject"]),
        charged=(),
        created_at=time(data["created_at"]),
        expires_at=time(data["expires_at"]),
        released_at=optional_time(data.get("released_at")),
        resource=optional_ref(data.get("resource")),
    )


def decode_reserved(data: Any) -> Reserved:
    return Reserved(decode_decision(data["decision"]), decode_reservation(data["reservation"]))


def decode_acquired(data: Any) -> Acquired:
    return Acquired(decode_decision(data["decision"]), decode_lease(data["lease"]))


def encode_hold(hold: Reservation | Lease, now: datetime) -> dict[str, Any]:
    """Either kind of hold, for a caller that reports both alike."""
    if isinstance(hold, Reservation):
        return encode_reservation(hold, now)
    return encode_lease(hold, now)
