"""What `sipmob.sip.ua.UACore` tells the application (`next_event`), and its one exception.

Responsible for: the event dataclasses, each naming the call, request (``rid``), operation (``op``)
or registration (``reg``) handle it concerns, and `UAError`.

Not here: how they are produced (`sipmob.sip.ua` and its parts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from sipmob.sip.headers import Replaces
from sipmob.sip.message import Request, Response
from sipmob.sip.transport import Address
from sipmob.sip.uri import NameAddr

CredentialsLookup = Callable[[str], "tuple[str, str] | None"]
"""``credentials(realm) -> (username, password)`` or None when we have none for that realm."""


# Events -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class IncomingInvite:
    """A new INVITE for us: answer it with `UACore.answer_invite`. ``replaces_call`` is the call
    (ours) that its Replaces header names, already checked to exist (RFC 3891 §3)."""

    call: int
    request: Request
    offer: bytes | None
    replaces: Replaces | None
    replaces_call: int | None
    referred_by: NameAddr | None
    source: Address | None = None  # where the INVITE came from (the policy's view of the caller)


@dataclasses.dataclass(frozen=True, slots=True)
class CallProgress:
    """A provisional response to our INVITE."""

    call: int
    response: Response


@dataclasses.dataclass(frozen=True, slots=True)
class CallEstablished:
    """The dialog is confirmed: for a UAC when the 2xx arrived (and the ACK has gone), for a UAS
    when the ACK arrived."""

    call: int
    remote_sdp: bytes | None


@dataclasses.dataclass(frozen=True, slots=True)
class CallFailed:
    """Our INVITE got no dialog: a final non-2xx, a timeout (408), or our CANCEL (487). For an
    incoming call, the caller cancelled it (487)."""

    call: int
    status: int
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class CallTerminated:
    """An established call ended: ``reason`` is "bye" (they hung up), "local" (we did), "replaced"
    (RFC 3891), "no-ack" (§13.3.1.4) or "timeout" (a request within it timed out or got 481/408)."""

    call: int
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class ReinviteReceived:
    """A re-INVITE within `call`: answer it with `UACore.answer_reinvite` (``offer`` None means they
    want our offer in the 2xx and will answer in the ACK)."""

    call: int
    rid: int
    request: Request
    offer: bytes | None


@dataclasses.dataclass(frozen=True, slots=True)
class ReinviteCompleted:
    """The final response to our re-INVITE `op` (after any 491 retries); 2xx has been ACKed."""

    call: int
    op: int
    response: Response | None


@dataclasses.dataclass(frozen=True, slots=True)
class RequestReceived:
    """A request the application answers with `UACore.respond`: INFO, REFER, SUBSCRIBE, NOTIFY
    outside a REFER subscription, or an out-of-dialog request whose method it asked for."""

    call: int | None
    rid: int
    request: Request


@dataclasses.dataclass(frozen=True, slots=True)
class ReferNotified:
    """A NOTIFY of the implicit subscription of our REFER `op` (RFC 3515 §2.4.5): the sipfrag's
    status and whether the subscription has ended."""

    call: int
    op: int
    status: int
    reason: str
    terminated: bool


@dataclasses.dataclass(frozen=True, slots=True)
class RequestCompleted:
    """The final response to a request we sent with `UACore.request` or within a call (BYE, INFO,
    REFER, NOTIFY...): None when it timed out or could not be sent."""

    op: int
    response: Response | None


@dataclasses.dataclass(frozen=True, slots=True)
class Registered:
    """The registrar accepted our binding `reg` for ``expires`` seconds (what it granted)."""

    reg: int
    expires: int


@dataclasses.dataclass(frozen=True, slots=True)
class RegistrationFailed:
    """A REGISTER for `reg` failed (``status`` 408 for a timeout); the core tries again after
    ``retry_in`` seconds, or never when it is None (the failure was of the un-REGISTER)."""

    reg: int
    status: int
    reason: str
    retry_in: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class Unregistered:
    """The binding `reg` is gone (the registrar confirmed expires=0, or it never existed)."""

    reg: int


UAEvent = (IncomingInvite | CallProgress | CallEstablished | CallFailed | CallTerminated
           | ReinviteReceived | ReinviteCompleted | RequestReceived | ReferNotified | RequestCompleted
           | Registered | RegistrationFailed | Unregistered)


class UAError(Exception):
    """Our own misuse of the core: an unknown call, an answer in the wrong state."""

