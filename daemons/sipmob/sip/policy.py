"""Who may do what to a SIP user agent: the question a UA core asks before it acts, sans-I/O.

Responsible for the contract between `sipmob.sip.ua.UACore` and the policy of the daemon it runs in
(ARCHITECTURE: "Policy at the edge of trust"): before the core turns a request from outside any
dialog into an event (a new call, an OPTIONS answer, an application's request), or lets one within
a dialog change it, it hands an `Admission` (the request, where it came from, the dialog a Replaces
header names, the dialog it is in) to a
`RequestPolicy`, which answers None (go on) or a `Refusal` (the status to answer with). The rules
any UA needs live here as plain functions, so every daemon's policy object applies the same ones:

- `replaces_permitted`: RFC 3891 §6: an INVITE with Replaces is honoured only when the party that
  asks is authorised by the participant of the dialog it replaces: its Referred-By names the
  replaced dialog's peer (the participant that sent the REFER) or one of the owners the daemon is
  configured with, or the INVITE comes from that peer itself. Knowing a dialog's Call-ID and tags
  is not enough. Referred-By is a claim (RFC 3892 §1: unsigned, it is only as good as the path it
  came on); the rule keeps strangers from taking a call with what a capture of a single message
  gives them, and a daemon that needs more asks for Digest identities of its own.
- `user_is_ours`: a request whose Request-URI user is not one we answer for gets 404.

`DEFAULT_POLICY` applies the Replaces rule with no owners: what a core without configuration does.

Not here: configuration, rates and limits (a daemon's policy object keeps that state, e.g.
`sipmob.mn.policy`), authentication of requests (Digest challenges we send are `sipmob.sip.auth`'s).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Protocol

from sipmob.sip.dialog import Dialog
from sipmob.sip.message import Request
from sipmob.sip.transport import Address
from sipmob.sip.uri import URI, NameAddr, SIPParseError


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """The answer to a request that is not admitted (with `headers`, e.g. Retry-After)."""

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 300 <= self.status < 700:
            raise ValueError(f"a refusal is a final non-2xx status, not {self.status}")


@dataclasses.dataclass(frozen=True, slots=True)
class Admission:
    """A request, as the core is about to act on it.

    ``replaced`` is the dialog its Replaces header names (the core has checked it exists, RFC
    3891 §3); ``dialogs`` the INVITE dialogs the core holds (being set up or established);
    ``dialog`` the dialog an in-dialog request matched (None outside any): it is asked before the
    request changes anything of that dialog (its remote CSeq, target, route set), so a policy that
    refuses one from a host that is not the dialog's peer leaves the call as it was."""

    request: Request
    source: Address
    now: float
    replaced: Dialog | None = None
    dialogs: int = 0
    dialog: Dialog | None = None
    peer: str = ""  # with `dialog`: the host its forming request came from or went to ("" unknown)


class RequestPolicy(Protocol):
    def admit(self, admission: Admission) -> Refusal | None:
        """None to let the core act on the request; a `Refusal` to answer it with instead."""


def same_identity(a: URI, b: URI) -> bool:
    """Whether two URIs name the same party: user and host (ports when both give one); sip and
    sips alike, parameters aside. Looser than §19.1.4, which would tell a Contact's ``;ob`` apart."""
    if a.scheme not in ("sip", "sips") or b.scheme not in ("sip", "sips"):
        return a.equivalent(b)
    if a.user != b.user or a.host.lower() != b.host.lower():
        return False
    return a.port is None or b.port is None or a.port == b.port


def referred_by(request: Request) -> URI | None:
    """The Referred-By URI (RFC 3892), None when absent or unreadable."""
    value = request.headers.get("Referred-By")
    if not value:
        return None
    try:
        return NameAddr.parse(value.strip()).uri
    except (SIPParseError, ValueError):
        return None


def replaces_permitted(replaced: Dialog, request: Request, owners: Iterable[URI] = ()) -> bool:
    """RFC 3891 §6: may `request` (an INVITE with Replaces) replace `replaced`?"""
    peer = replaced.remote_uri.uri
    by = referred_by(request)
    if by is not None and (same_identity(by, peer) or any(same_identity(by, o) for o in owners)):
        return True
    # The peer replacing its own dialog (a re-established leg, RFC 3891 §1's call pickup by the
    # same party) needs no referrer.
    return same_identity(request.from_.uri, peer)


def user_is_ours(request: Request, users: Iterable[str], *, hostless_ok: bool = False) -> bool:
    """Whether the Request-URI's user part is one of `users` (with `hostless_ok`, a URI without a
    user part too: an OPTIONS to the host, §11)."""
    user = request.uri.user
    if not user:
        return hostless_ok
    return user in set(users)


class ReplacesPolicy:
    """Only the RFC 3891 §6 rule, with `owners` as the referrers every dialog accepts."""

    def __init__(self, owners: Iterable[URI] = ()) -> None:
        self.owners = tuple(owners)

    def admit(self, admission: Admission) -> Refusal | None:
        if admission.replaced is not None and not replaces_permitted(admission.replaced, admission.request,
                                                                     self.owners):
            return Refusal(403, "Replaces Not Authorised")
        return None


DEFAULT_POLICY = ReplacesPolicy()
