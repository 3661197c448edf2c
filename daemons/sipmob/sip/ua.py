"""The SIP user-agent core (RFC 3261 §8, §12-§15; RFC 3515, 3891, 3892), sans-I/O.

Responsible for what a UA does with the requests and responses its `TransactionLayer` delivers:
INVITE sessions as a UAC and a UAS (early and late offer, CANCEL, the UAS's 2xx retransmission
until the ACK arrives and BYE when it never does, §13.3.1.4; the UAC's ACK for every 2xx,
§13.2.2.4), re-INVITE with 491 glare and the §14.1 randomised back-off, BYE, OPTIONS answered
with our capabilities, INFO, REFER with its implicit subscription and ``message/sipfrag`` NOTIFYs
(RFC 3515), INVITE with Replaces (RFC 3891: 481 when no dialog matches, BYE on the replaced
dialog once the new one is confirmed), and the checks every UAS makes first: 481 for a request
outside any dialog we know, 500 for an out-of-order CSeq (§12.2.2), 405 with Allow, 415, 420.

Calls are numbered handles; the application learns of things through events (`next_event`) and acts
with methods that take ``now``. Everything to send comes out of `messages_to_send`, and the next
deadline (the layer's or ours) out of `get_timer`.

Not here: SDP (`sipmob.sdp`: bodies are opaque bytes to the core), sockets and the reactor
(`sipmob.service.sipua`), DNS.

Also here: answering Digest challenges (RFC 3261 §22.2-22.3 with RFC 7616/8760 via `sipmob.sip.auth`):
a request answered 401 or 407 is sent again, once per challenge, with a new CSeq and branch and the
credentials the application gave; and REGISTER bindings (§10.2) kept fresh by `register`: the
refresh goes out at half the expiry the registrar granted, a 423 is retried with its Min-Expires,
and after a failure the next attempt waits as RFC 5626 §4.5 says (30 s doubling up to 30 min,
then a random 50-100 % of that).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
import secrets
from collections.abc import Callable, Sequence

from sipmob.sip import transaction as tx
from sipmob.sip.auth import Challenge, authorization
from sipmob.sip.dialog import Dialog, DialogId, DialogState, uri_destination
from sipmob.sip.headers import CSeq, Replaces
from sipmob.sip.message import Headers, Request, Response, make_response, reason_phrase
from sipmob.sip.policy import DEFAULT_POLICY, Admission, RequestPolicy
from sipmob.sip.transaction import TimerConfig, TransactionKey, TransactionLayer
from sipmob.sip.transport import Address, fits_transport
from sipmob.sip.uri import URI, NameAddr, SIPParseError

log = logging.getLogger("sipmob.sip.ua")

ALLOW = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "REFER", "NOTIFY", "SUBSCRIBE")
ACCEPT = ("application/sdp", "message/sipfrag")
SUPPORTED = ("replaces",)
SDP = "application/sdp"
SIPFRAG = "message/sipfrag"
_IN_DIALOG_ONLY = frozenset({"BYE", "INFO", "REFER", "NOTIFY"})
_GLARE_RETRIES = 3
REFER_EXPIRES = 60
# RFC 8760 §2.4: prefer the strongest algorithm a challenge offers
_ALGORITHM_STRENGTH = {"SHA-512-256": 3, "SHA-256": 2, "MD5": 1}
_MAX_NONCES = 64
_RETRY_BASE = 30.0  # RFC 5626 §4.5 base-time (no flow recovered) and max-time
_RETRY_MAX = 1800.0

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


# Internal state ---------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _ServerRequest:
    request: Request
    key: TransactionKey
    call: int | None
    to_tag: str | None


@dataclasses.dataclass(slots=True)
class _Call:
    handle: int
    is_uac: bool
    state: str  # calling, early, incoming, answered, confirmed, terminated
    invite: Request
    invite_key: TransactionKey | None = None
    dialog: Dialog | None = None
    local_sdp: bytes | None = None
    remote_sdp: bytes | None = None
    answer_for: Callable[[bytes], bytes] | None = None  # UAC late offer: our answer for the ACK
    cancel_wanted: bool = False
    cancelled: bool = False
    acks: dict[int, tuple[Request, Address]] = dataclasses.field(default_factory=dict)
    # UAS: the 2xx we retransmit until the ACK (§13.3.1.4)
    ok: Response | None = None
    ok_seq: int = 0
    ok_interval: float = 0.0
    ok_next: float | None = None
    ok_give_up: float = 0.0
    # re-INVITE we sent: (op, request, key, body, retries) and a glare retry due time
    reinvite: tuple[int, Request, TransactionKey | None, bytes | None, int] | None = None
    reinvite_retry_at: float | None = None
    reinvite_answer_for: Callable[[bytes], bytes] | None = None
    ack_pending: int | None = None  # CSeq of a 2xx whose ACK waits for `UACore.ack`
    kind: str = "invite"  # or "subscription" (RFC 6665), which has no INVITE, ACK or BYE
    # re-INVITE we received and have not answered finally yet
    incoming_reinvite: int | None = None
    replaces_call: int | None = None
    refers: dict[int, int] = dataclasses.field(default_factory=dict)  # REFER CSeq -> op
    refer_subs: dict[int, int] = dataclasses.field(default_factory=dict)  # rid -> REFER CSeq (theirs)


@dataclasses.dataclass(slots=True)
class _Sent:
    """A request as we made it (before the layer's Via), kept until its final response, so a
    401/407 can be answered by sending it again (§22.2)."""

    request: Request
    destination: Address
    dialog: Dialog | None
    # (header, realm) -> the challenge answered in this request; header is the one we send
    challenges: dict[tuple[str, str], Challenge] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class _Registration:
    handle: int
    registrar: URI
    aor: URI
    call_id: str
    expires: int
    cseq: int = 0
    state: str = "registering"  # registered, failed, unregistering
    key: TransactionKey | None = None
    refresh_at: float | None = None
    failures: int = 0
    interval_retried: bool = False


class UACore:
    """One SIP user agent: its calls, dialogs and the transactions under them.

    `local` are the addresses we listen on (the first one is our Contact); `capabilities_sdp`
    is the body of our OPTIONS answers (RFC 3261 §11.2). `token` makes tags, Call-IDs and branches;
    `rng` draws the §14.1 back-off: tests pass deterministic ones. `policy` decides who may do
    what (`sipmob.sip.policy`); without one, only RFC 3891 §6's rule on Replaces applies.
    """

    def __init__(self, local: Sequence[Address], *, user: str = "sipmob", display_name: str | None = None,
                 user_agent: str | None = "sipmob/0.1", timers: TimerConfig | None = None,
                 capabilities_sdp: Callable[[], bytes] | None = None,
                 token: Callable[[], str] | None = None, rng: random.Random | None = None,
                 credentials: CredentialsLookup | tuple[str, str] | None = None,
                 policy: RequestPolicy | None = None) -> None:
        self.credentials = credentials
        # asked before any request from outside a dialog becomes an event (sipmob.sip.policy)
        self.policy: RequestPolicy = policy if policy is not None else DEFAULT_POLICY
        self._token = token or (lambda: secrets.token_hex(8))
        self.layer = TransactionLayer(list(local), timers, branch_token=self._token)
        self.timers = self.layer.timers
        first = local[0]
        params: tuple[tuple[str, str | None], ...] = (
            (("transport", first.transport),) if first.transport != "udp" else ())
        host = f"[{first.host}]" if ":" in first.host else first.host
        self.contact_uri = URI("sip", user=user, host=first.host, port=first.port, params=params)
        self.aor = URI.parse(f"sip:{user}@{host}")
        self.display_name = display_name
        self.user_agent = user_agent
        self.capabilities_sdp = capabilities_sdp
        self.app_methods: set[str] = set()  # out-of-dialog methods the application answers itself
        self._rng = rng or random.Random()
        self._calls: dict[int, _Call] = {}
        self._by_dialog: dict[DialogId, int] = {}
        self._by_invite_key: dict[TransactionKey, int] = {}
        self._server: dict[int, _ServerRequest] = {}
        self._client: dict[TransactionKey, tuple[int, int | None, str]] = {}  # key -> (op, call, kind)
        self._events: collections.deque[UAEvent] = collections.deque()
        self._next = 0
        self._sent: dict[TransactionKey, _Sent] = {}
        self._nc: dict[str, int] = {}  # nonce -> requests made with it (RFC 7616 §3.4)
        self._regs: dict[int, _Registration] = {}

    # Output ---------------------------------------------------------------------------------------

    @property
    def local_contact(self) -> NameAddr:
        return NameAddr(None, self.contact_uri)

    def next_event(self) -> UAEvent | None:
        return self._events.popleft() if self._events else None

    def messages_to_send(self) -> list[tuple[bytes, Address]]:
        return self.layer.messages_to_send()

    def call_state(self, call: int) -> str:
        """The call's state ("terminated" once it has gone)."""
        c = self._calls.get(call)
        return c.state if c is not None else "terminated"

    def dialog(self, call: int) -> Dialog | None:
        c = self._calls.get(call)
        return c.dialog if c is not None else None

    def sdp(self, call: int) -> tuple[bytes | None, bytes | None]:
        """The call's (local, remote) session descriptions as last negotiated."""
        c = self._call(call)
        return c.local_sdp, c.remote_sdp

    def __len__(self) -> int:
        """Live calls (dialogs being set up or established)."""
        return len(self._calls)

    def get_timer(self) -> float | None:
        deadlines = [d for d in (self.layer.get_timer(),) if d is not None]
        for c in self._calls.values():
            if c.ok_next is not None:
                deadlines.append(c.ok_next)
            if c.reinvite_retry_at is not None:
                deadlines.append(c.reinvite_retry_at)
        deadlines += [r.refresh_at for r in self._regs.values() if r.refresh_at is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        self.layer.handle_timer(now)
        self._pump(now)
        for c in list(self._calls.values()):
            if c.ok_next is not None and c.ok_next <= now and c.ok is not None:
                if now >= c.ok_give_up:
                    # §13.3.1.4: no ACK after 64*T1: the dialog is confirmed, then ended with BYE
                    c.ok_next = None
                    self._send_bye(c, now)
                    self._end(c, "no-ack", now)
                    continue
                self.layer.send_response(c.ok, now)
                c.ok_interval = min(2 * c.ok_interval, self.timers.t2)
                c.ok_next = min(now + c.ok_interval, c.ok_give_up)
            if c.reinvite_retry_at is not None and c.reinvite_retry_at <= now:
                c.reinvite_retry_at = None
                self._send_reinvite(c, now)
        for r in list(self._regs.values()):
            if r.refresh_at is not None and r.refresh_at <= now:
                r.refresh_at = None
                self._send_register(r, r.expires, now)
        self._pump(now)

    # Input ----------------------------------------------------------------------------------------

    def receive(self, data: bytes, source: Address, now: float) -> None:
        """One message from the network; never raises for the peer's mistakes."""
        self.layer.receive(data, source, now)
        self._pump(now)

    def transport_error(self, destination: Address, now: float) -> None:
        self.layer.transport_error(destination, now)
        self._pump(now)

    # Outgoing calls -------------------------------------------------------------------------------

    def invite(self, target: URI, sdp: bytes | None, now: float, *,
               headers: Sequence[tuple[str, str]] = (),
               answer_for: Callable[[bytes], bytes] | None = None) -> int:
        """Send an INVITE to `target` (with our offer, or none for a late offer: then `answer_for`
        gives the answer the ACK carries for the offer in the 2xx; without it the ACK waits for
        `ack`, as third-party call control needs, RFC 3725 §4). Returns the call handle."""
        handle = self._new_handle()
        h = Headers()
        h.add("Max-Forwards", "70")
        h.add("From", str(NameAddr(self.display_name, self.aor, (("tag", self._token()),))))
        h.add("To", str(NameAddr(None, target.replace(headers=()))))
        h.add("Call-ID", f"{self._token()}@{self.contact_uri.host}")
        h.add("CSeq", str(CSeq(1, "INVITE")))
        h.add("Contact", str(self.local_contact))
        self._common_headers(h)
        for name, value in headers:
            h.add(name, value)
        if sdp:
            h.add("Content-Type", SDP)
        request = Request("INVITE", target.replace(headers=()), h, sdp or b"")
        c = _Call(handle, True, "calling", request, local_sdp=sdp, answer_for=answer_for)
        self._calls[handle] = c
        key = self._send(request, uri_destination(target), None, now)
        c.invite_key = key
        self._by_invite_key[key] = handle
        self._pump(now)
        return handle

    def cancel(self, call: int, now: float) -> None:
        """CANCEL our pending INVITE (§9.1): at once if a provisional response has come, else as
        soon as one does. A 2xx racing the CANCEL is ACKed and the call ended with BYE."""
        c = self._call(call)
        if not c.is_uac or c.state not in ("calling", "early"):
            raise UAError(f"call {call} has no pending INVITE to cancel")
        c.cancel_wanted = True
        if c.invite_key is not None and self.layer.state_of(c.invite_key) is tx.State.PROCEEDING:
            self._send_cancel(c, now)
        self._pump(now)

    # Incoming calls -------------------------------------------------------------------------------

    def answer_invite(self, call: int, status: int, now: float, *, sdp: bytes | None = None,
                      reason: str | None = None, headers: Sequence[tuple[str, str]] = ()) -> None:
        """Answer an incoming INVITE: a 1xx (180 makes an early dialog), a 2xx with `sdp` (our
        answer, or our offer when the INVITE had none) retransmitted until the ACK, or a failure."""
        c = self._call(call)
        if c.is_uac or c.state not in ("incoming", "early"):
            raise UAError(f"call {call} has no INVITE waiting for an answer")
        assert c.invite_key is not None
        tag = c.dialog.local_tag if c.dialog is not None else self._token()
        if status == 100:
            raise UAError("100 Trying is the transaction layer's")
        h = [*headers, *self._response_common()]
        if status < 300:
            h.append(("Contact", str(self.local_contact)))
        body = b""
        if sdp is not None and status < 300:
            body = sdp
            h.append(("Content-Type", SDP))
        response = make_response(c.invite, status, reason, to_tag=tag, headers=h, body=body)
        if not self._fits(response):
            too_large = make_response(c.invite, 513, to_tag=tag, headers=self._response_common())
            self.layer.send_response(too_large, now)
            self._forget(c, now)
            self._events.append(CallFailed(c.handle, 513, "our answer is too large for UDP"))
            self._pump(now)
            return
        if 100 < status < 300 and c.dialog is None:
            c.dialog = Dialog.from_uas(c.invite, tag, self.local_contact)
            self._by_dialog[c.dialog.id] = c.handle
        if status < 200:
            if c.dialog is not None:
                c.state = "early"
            self.layer.send_response(response, now)
        elif status < 300:
            assert c.dialog is not None
            c.local_sdp = sdp
            c.state = "answered"
            c.ok = response
            c.ok_seq = c.invite.cseq.seq
            c.ok_interval = self.timers.t1
            c.ok_next = now + self.timers.t1
            c.ok_give_up = now + 64 * self.timers.t1
            self.layer.send_response(response, now)
        else:
            self.layer.send_response(response, now)
            self._forget(c, now)
        self._pump(now)

    # Within a call --------------------------------------------------------------------------------

    def reinvite(self, call: int, sdp: bytes | None, now: float, *,
                 answer_for: Callable[[bytes], bytes] | None = None) -> int:
        """Send a re-INVITE (a new offer, or none to ask for theirs: `answer_for` then makes the
        answer for the ACK, and without it the ACK waits for `ack`). A 491 is retried after the
        §14.1 back-off. Returns the op number that `ReinviteCompleted` carries."""
        c = self._call(call)
        if c.state != "confirmed" or c.dialog is None:
            raise UAError(f"call {call} is not established")
        if c.reinvite is not None:
            raise UAError(f"call {call} has a re-INVITE pending already (§14.1)")
        if c.ack_pending is not None:
            raise UAError(f"call {call} still owes an ACK with an answer")
        op = self._new_handle()
        c.reinvite = (op, c.invite, None, sdp, 0)
        c.reinvite_answer_for = answer_for
        self._send_reinvite(c, now)
        self._pump(now)
        return op

    def adopt(self, dialog: Dialog, *, local_sdp: bytes | None = None,
              remote_sdp: bytes | None = None) -> int:
        """Take over a confirmed INVITE dialog this UA held before a restart (from its state file):
        it becomes a call like any other (BYE, re-INVITE, requests from the peer). Returns its handle."""
        if dialog.id in self._by_dialog:
            raise UAError(f"dialog {dialog.call_id} is held already")
        dialog.state = DialogState.CONFIRMED
        handle = self._new_handle()
        # What the INVITE was matters no more: a request of the dialog's shape stands in for it.
        invite = dialog.create_request("INVITE", cseq=dialog.local_seq)
        self._calls[handle] = _Call(handle, dialog.is_uac, "confirmed", invite, dialog=dialog,
                                    local_sdp=local_sdp, remote_sdp=remote_sdp)
        self._by_dialog[dialog.id] = handle
        return handle

    def ack_pending(self, call: int) -> bool:
        """Whether the call's last 2xx (to a late-offer INVITE or re-INVITE) waits for `ack`."""
        c = self._calls.get(call)
        return c is not None and c.ack_pending is not None

    def ack(self, call: int, sdp: bytes | None, now: float) -> None:
        """Send the ACK held for a late-offer 2xx, with our answer to the offer it carried."""
        c = self._call(call)
        if c.ack_pending is None:
            raise UAError(f"call {call} has no ACK waiting")
        seq, c.ack_pending = c.ack_pending, None
        if sdp is not None:
            c.local_sdp = sdp
        self._send_ack(c, seq, sdp or b"")
        self._pump(now)

    def answer_reinvite(self, call: int, rid: int, status: int, now: float, *,
                        sdp: bytes | None = None, reason: str | None = None) -> None:
        """Answer a re-INVITE we received: 2xx with our answer (or offer) in `sdp`, or a failure
        (the session stays as it was, §14.2)."""
        c = self._call(call)
        sr = self._server.pop(rid, None)
        if sr is None or c.incoming_reinvite != rid or c.dialog is None:
            raise UAError(f"no re-INVITE {rid} waiting in call {call}")
        c.incoming_reinvite = None
        h: list[tuple[str, str]] = [*self._response_common()]
        body = b""
        if 200 <= status < 300:
            h.append(("Contact", str(self.local_contact)))
            c.dialog.refresh_target(sr.request)
            if sdp is not None:
                body = sdp
                h.append(("Content-Type", SDP))
                c.local_sdp = sdp
            if sr.request.body:
                c.remote_sdp = sr.request.body
        response = make_response(sr.request, status, reason, headers=h, body=body)
        if not self._fits(response):
            response = make_response(sr.request, 513, headers=self._response_common())
            status = 513
        self.layer.send_response(response, now)
        if 200 <= status < 300:
            c.ok = response
            c.ok_seq = sr.request.cseq.seq
            c.ok_interval = self.timers.t1
            c.ok_next = now + self.timers.t1
            c.ok_give_up = now + 64 * self.timers.t1
        self._pump(now)

    def bye(self, call: int, now: float) -> int:
        """End the call: BYE for a dialog (§15.1.1), CANCEL for our unanswered INVITE, 603 for an
        incoming one. Returns the op number of the BYE's `RequestCompleted` (0 when none is sent)."""
        c = self._call(call)
        if c.state in ("calling", "early") and c.is_uac:
            self.cancel(call, now)
            return 0
        if c.state in ("incoming", "early") and not c.is_uac:
            self.answer_invite(call, 603, now)
            return 0
        op = self._send_bye(c, now)
        self._end(c, "local", now)
        self._pump(now)
        return op

    def request_in_call(self, call: int, method: str, now: float, *,
                        headers: Sequence[tuple[str, str]] = (), body: bytes = b"",
                        content_type: str | None = None) -> int:
        """Send a request within the call's dialog (INFO, NOTIFY, SUBSCRIBE...); returns the op
        number its `RequestCompleted` carries."""
        c = self._call(call)
        if c.dialog is None or c.dialog.state is DialogState.TERMINATED:
            raise UAError(f"call {call} has no dialog")
        op = self._new_handle()
        request = c.dialog.create_request(method, headers=[*self._request_common(), *headers],
                                          body=body, content_type=content_type)
        key = self._send(request, c.dialog.destination(), c.dialog, now)
        self._client[key] = (op, call, method)
        if c.kind == "subscription" and method == "NOTIFY" and _subscription_state(request) == "terminated":
            self._end(c, "terminated", now)  # RFC 6665 §4.2.2: the notifier's last NOTIFY
        self._pump(now)
        return op

    def refer(self, call: int, refer_to: NameAddr, now: float, *,
              referred_by: NameAddr | None = None) -> int:
        """Send a REFER within the call (RFC 3515). `ReferNotified` events report the NOTIFYs of its
        implicit subscription; `RequestCompleted` the REFER's own response (202)."""
        headers = [("Refer-To", str(refer_to))]
        if referred_by is not None:
            headers.append(("Referred-By", str(referred_by)))
        c = self._call(call)
        op = self.request_in_call(call, "REFER", now, headers=headers)
        assert c.dialog is not None
        c.refers[c.dialog.local_seq] = op
        return op

    def accept_refer(self, call: int, rid: int, now: float) -> int:
        """Accept a REFER we received: 202, then the first NOTIFY ("100 Trying", RFC 3515 §2.4.5).
        Returns the REFER's CSeq, the ``id`` of its subscription, for `notify_refer`."""
        c = self._call(call)
        sr = self._server.get(rid)
        if sr is None or sr.request.method != "REFER":
            raise UAError(f"no REFER {rid} waiting")
        self.respond(rid, 202, now)
        seq = sr.request.cseq.seq
        c.refer_subs[seq] = seq
        self.notify_refer(call, seq, 100, now)
        return seq

    def notify_refer(self, call: int, refer_id: int, status: int, now: float, *,
                     reason: str | None = None) -> int:
        """Report the referred request's progress in a ``message/sipfrag`` NOTIFY; a final status
        ends the subscription (RFC 3515 §2.4.7)."""
        c = self._call(call)
        if refer_id not in c.refer_subs:
            raise UAError(f"no REFER subscription {refer_id} in call {call}")
        final = status >= 200
        state = "terminated;reason=noresource" if final else f"active;expires={REFER_EXPIRES}"
        if final:
            del c.refer_subs[refer_id]
        frag = f"SIP/2.0 {status} {reason or reason_phrase(status)}\r\n".encode()
        return self.request_in_call(call, "NOTIFY", now, headers=[
            ("Event", f"refer;id={refer_id}"), ("Subscription-State", state)],
            body=frag, content_type=SIPFRAG)

    # Out of dialog --------------------------------------------------------------------------------

    def request(self, method: str, target: URI, now: float, *,
                headers: Sequence[tuple[str, str]] = (), body: bytes = b"",
                content_type: str | None = None) -> int:
        """Send a request outside any dialog (OPTIONS, MESSAGE...); returns the op number of its
        `RequestCompleted`."""
        if method in ("INVITE", "ACK", "CANCEL"):
            raise UAError(f"use invite/cancel for {method}")
        op = self._new_handle()
        h = Headers()
        h.add("Max-Forwards", "70")
        h.add("From", str(NameAddr(self.display_name, self.aor, (("tag", self._token()),))))
        h.add("To", str(NameAddr(None, target.replace(headers=()))))
        h.add("Call-ID", f"{self._token()}@{self.contact_uri.host}")
        h.add("CSeq", str(CSeq(1, method)))
        if method in ("SUBSCRIBE", "REFER"):
            h.add("Contact", str(self.local_contact))
        self._common_headers(h)
        for name, value in headers:
            h.add(name, value)
        if body:
            h.add("Content-Type", content_type or SDP)
        request = Request(method, target.replace(headers=()), h, body)
        key = self._send(request, uri_destination(target), None, now)
        self._client[key] = (op, None, method)
        self._pump(now)
        return op

    def respond(self, rid: int, status: int, now: float, *, reason: str | None = None,
                headers: Sequence[tuple[str, str]] = (), body: bytes = b"",
                content_type: str | None = None) -> int | None:
        """Answer a request delivered as `RequestReceived` (or decline a REFER).

        A 2xx to an out-of-dialog SUBSCRIBE creates a subscription dialog (RFC 6665 §4.2.1): its
        handle is returned, for the NOTIFYs the application sends with `request_in_call` (one
        with ``Subscription-State: terminated`` ends it). A 2xx to a NOTIFY saying ``terminated``
        ends the subscription it belongs to."""
        sr = self._server.pop(rid, None)
        if sr is None:
            raise UAError(f"no request {rid} waiting for an answer")
        h = [*headers, *self._response_common()]
        if body:
            h.append(("Content-Type", content_type or SDP))
        request = sr.request
        tag = (sr.to_tag or self._token()) if request.to.tag is None else None
        if request.method == "SUBSCRIBE" and tag is not None and 200 <= status < 300:
            h.append(("Contact", str(self.local_contact)))
        response = make_response(request, status, reason, to_tag=tag, headers=h, body=body)
        if not self._fits(response):
            status = 513
            response = make_response(request, 513, to_tag=tag, headers=self._response_common())
        self.layer.send_response(response, now)
        created: int | None = None
        ok = 200 <= status < 300
        if request.method == "SUBSCRIBE" and tag is not None and ok:
            created = self._new_handle()
            dialog = Dialog.from_uas(request, tag, self.local_contact, confirmed=True)
            self._calls[created] = _Call(created, False, "confirmed", request, dialog=dialog,
                                         kind="subscription")
            self._by_dialog[dialog.id] = created
        c = self._calls.get(sr.call) if sr.call is not None else None
        if c is not None and c.kind == "subscription" and request.method == "NOTIFY" and ok \
                and _subscription_state(request) == "terminated":
            self._end(c, "terminated", now)
        self._pump(now)
        return created

    def subscribe(self, target: URI, event: str, now: float, *, expires: int = 600,
                  headers: Sequence[tuple[str, str]] = ()) -> int:
        """Send a SUBSCRIBE for `event` (RFC 6665). Returns the subscription's handle; its
        `RequestCompleted` carries the response, and a 2xx makes the subscription dialog in which
        NOTIFYs arrive as `RequestReceived` (answer them with `respond`)."""
        handle = self._new_handle()
        h = Headers()
        h.add("Max-Forwards", "70")
        h.add("From", str(NameAddr(self.display_name, self.aor, (("tag", self._token()),))))
        h.add("To", str(NameAddr(None, target.replace(headers=()))))
        h.add("Call-ID", f"{self._token()}@{self.contact_uri.host}")
        h.add("CSeq", str(CSeq(1, "SUBSCRIBE")))
        h.add("Contact", str(self.local_contact))
        h.add("Event", event)
        h.add("Expires", str(expires))
        self._common_headers(h)
        for name, value in headers:
            h.add(name, value)
        request = Request("SUBSCRIBE", target.replace(headers=()), h)
        self._calls[handle] = _Call(handle, True, "subscribing", request, kind="subscription")
        key = self._send(request, uri_destination(target), None, now)
        self._client[key] = (handle, handle, "SUBSCRIBE")
        self._pump(now)
        return handle

    # Registration (§10.2) -------------------------------------------------------------------------

    def register(self, registrar: URI, now: float, *, aor: URI | None = None, expires: int = 3600) -> int:
        """Bind our Contact to `aor` (by default ours) at `registrar` for `expires` seconds and keep
        the binding fresh until `unregister`. Returns the registration's handle, which `Registered`,
        `RegistrationFailed` and `Unregistered` carry."""
        if expires <= 0:
            raise UAError("expires must be positive (use unregister to remove a binding)")
        handle = self._new_handle()
        r = _Registration(handle, registrar.replace(headers=()), aor or self.aor,
                          f"{self._token()}@{self.contact_uri.host}", expires)
        self._regs[handle] = r
        self._send_register(r, expires, now)
        self._pump(now)
        return handle

    def unregister(self, reg: int, now: float) -> None:
        """Remove the binding (REGISTER with expires 0, §10.2.2); `Unregistered` follows."""
        r = self._regs.get(reg)
        if r is None:
            raise UAError(f"no registration {reg}")
        r.refresh_at = None
        if r.state == "failed":
            del self._regs[reg]  # nothing is bound, so there is nothing to remove
            self._events.append(Unregistered(reg))
            return
        r.state = "unregistering"
        self._send_register(r, 0, now)
        self._pump(now)

    def registration_state(self, reg: int) -> str:
        """registering, registered, failed, unregistering, or "gone"."""
        r = self._regs.get(reg)
        return r.state if r is not None else "gone"

    def _send_register(self, r: _Registration, expires: int, now: float) -> None:
        # §10.2.4: the same Call-ID for every REGISTER of one binding, the CSeq one higher each time
        r.cseq += 1
        h = Headers()
        h.add("Max-Forwards", "70")
        h.add("From", str(NameAddr(self.display_name, r.aor, (("tag", self._token()),))))
        h.add("To", str(NameAddr(None, r.aor)))
        h.add("Call-ID", r.call_id)
        h.add("CSeq", str(CSeq(r.cseq, "REGISTER")))
        h.add("Contact", str(self.local_contact))
        h.add("Expires", str(expires))
        self._common_headers(h)
        request = Request("REGISTER", r.registrar, h)
        r.key = self._send(request, uri_destination(r.registrar), None, now)

    def _reg_keys(self) -> set[TransactionKey]:
        return {r.key for r in self._regs.values() if r.key is not None}

    def _on_register_response(self, key: TransactionKey, response: Response, now: float) -> None:
        r = next(r for r in self._regs.values() if r.key == key)
        status = response.status
        if status < 200:
            return
        retry = self._auth_retry(key, response, now)
        if retry is not None:
            r.key = retry
            r.cseq = self._sent[retry].request.cseq.seq
            return
        r.key = None
        if 200 <= status < 300:
            if r.state == "unregistering":
                del self._regs[r.handle]
                self._events.append(Unregistered(r.handle))
                return
            granted = self._granted_expires(response, r.expires)
            r.state = "registered"
            r.failures = 0
            r.interval_retried = False
            r.refresh_at = now + max(granted / 2, 1.0)
            self._events.append(Registered(r.handle, granted))
            return
        if status == 423 and r.state != "unregistering" and not r.interval_retried:
            # §10.3 step 7: too brief; ask again with at least what the registrar wants
            try:
                minimum = int((response.headers.get("Min-Expires") or "").strip())
            except ValueError:
                minimum = 0
            if minimum > r.expires:
                r.expires = minimum
                r.interval_retried = True
                self._send_register(r, r.expires, now)
                return
        self._register_failed(r, status, response.reason, now)

    def _register_failed(self, r: _Registration, status: int, reason: str, now: float) -> None:
        r.key = None
        if r.state == "unregistering":
            del self._regs[r.handle]
            self._events.append(RegistrationFailed(r.handle, status, reason, None))
            self._events.append(Unregistered(r.handle))
            return
        r.failures += 1
        r.state = "failed"
        r.interval_retried = False
        wait = min(_RETRY_MAX, _RETRY_BASE * 2 ** r.failures)
        wait *= 0.5 + self._rng.random() / 2  # RFC 5626 §4.5: 50-100 % of the wait time
        r.refresh_at = now + wait
        self._events.append(RegistrationFailed(r.handle, status, reason, wait))

    def _granted_expires(self, response: Response, asked: int) -> int:
        """What the registrar granted (§10.2.4): our Contact's expires, else Expires, else ours."""
        ours = self.contact_uri
        for contact in response.contact:
            u = contact.uri
            if (u.user, u.host.lower(), u.port) == (ours.user, ours.host.lower(), ours.port):
                value = contact.param("expires")
                if value is not None and value.strip().isdigit():
                    return int(value)
        value = response.headers.get("Expires")
        if value is not None and value.strip().isdigit():
            return int(value)
        return asked

    # Digest challenges (§22.2, §22.3) -------------------------------------------------------------

    def _send(self, request: Request, destination: Address, dialog: Dialog | None, now: float,
              challenges: dict[tuple[str, str], Challenge] | None = None) -> TransactionKey:
        key = self.layer.send_request(request, destination, now)
        self._sent[key] = _Sent(request, destination, dialog, challenges or {})
        return key

    def _credentials_for(self, realm: str) -> tuple[str, str] | None:
        if self.credentials is None or isinstance(self.credentials, tuple):
            return self.credentials
        return self.credentials(realm)

    def _auth_retry(self, key: TransactionKey, response: Response, now: float) -> TransactionKey | None:
        """Send the request of `key` again answering the 401/407 `response`; None when we cannot
        (no credentials for a realm, nothing we support, or the realm rejected what we sent)."""
        sent = self._sent.pop(key, None)
        if sent is None or response.status not in (401, 407) or self.credentials is None:
            return None
        if response.status == 401:
            offered, answer = "WWW-Authenticate", "Authorization"
        else:
            offered, answer = "Proxy-Authenticate", "Proxy-Authorization"
        best: dict[str, Challenge] = {}
        for value in response.headers.get_lines(offered):
            try:
                challenge = Challenge.parse(value)
            except SIPParseError:
                continue
            if not challenge.supported:
                continue
            known = best.get(challenge.realm)
            if known is None or (_ALGORITHM_STRENGTH.get(challenge.algorithm.upper().removesuffix("-SESS"), 0)
                                 > _ALGORITHM_STRENGTH.get(known.algorithm.upper().removesuffix("-SESS"), 0)):
                best[challenge.realm] = challenge
        if not best:
            return None
        challenges = dict(sent.challenges)
        for realm, challenge in best.items():
            if (answer, realm) in sent.challenges and not challenge.stale:
                log.info("%s rejected our credentials for realm %r", response.status, realm)
                return None  # we answered this realm already: wrong user or password
            if self._credentials_for(realm) is None:
                return None
            challenges[(answer, realm)] = challenge
        request = sent.request.copy()
        request.headers.remove("Via")
        request.headers.remove("Authorization")
        request.headers.remove("Proxy-Authorization")
        if sent.dialog is not None:  # §12.2.1.1: in a dialog, the next of the dialog's CSeqs
            sent.dialog.local_seq += 1
            seq = sent.dialog.local_seq
        else:
            seq = request.cseq.seq + 1
        request.headers.set("CSeq", str(CSeq(seq, request.method)))
        for (header, realm), challenge in challenges.items():
            creds = self._credentials_for(realm)
            if creds is None:
                return None
            self._nc[challenge.nonce] = nc = self._nc.pop(challenge.nonce, 0) + 1
            while len(self._nc) > _MAX_NONCES:
                del self._nc[next(iter(self._nc))]
            request.headers.add(header, authorization(challenge, request.method, str(request.uri),
                                                      creds[0], creds[1], self._token(), nc,
                                                      request.body))
        return self._send(request, sent.destination, sent.dialog, now, challenges)

    # The event pump -------------------------------------------------------------------------------

    def handle_layer_event(self, event: tx.Event, now: float) -> None:
        """An event of our `layer` that someone else drained (a transport adapter that drives the
        layer itself); never raises for the peer's mistakes."""
        self._handle(event, now)

    def _pump(self, now: float) -> None:
        while (event := self.layer.next_event()) is not None:
            self._handle(event, now)

    def _handle(self, event: tx.Event, now: float) -> None:
        try:
            self._dispatch(event, now)
        except ValueError as exc:
            # a header the parser only reads on demand was malformed (SIPParseError), or a
            # response lacked what a dialog needs
            log.debug("dropped a message the UA cannot use: %s", exc)
            if isinstance(event, tx.RequestReceived) and event.request.method != "ACK":
                reason = exc.reason if isinstance(exc, SIPParseError) else "Bad Request"
                self._reply(event.request, 400, now, reason=reason)

    def _dispatch(self, event: tx.Event, now: float) -> None:
        if isinstance(event, tx.RequestReceived):
            self._on_request(event, now)
        elif isinstance(event, tx.ResponseReceived):
            self._on_response(event.response, event.transaction_key, now)
        elif isinstance(event, tx.AckReceived):
            self._on_ack(event.request, now)
        elif isinstance(event, tx.TransactionTimedOut | tx.TransportError):
            self._on_client_failure(event.transaction_key, now)
        elif isinstance(event, tx.TransactionTerminated):
            self._sent.pop(event.transaction_key, None)
            handle = self._by_invite_key.pop(event.transaction_key, None)
            c = self._calls.get(handle) if handle is not None else None
            if c is not None and c.invite_key == event.transaction_key:
                c.invite_key = None

    # Requests ---------------------------------------------------------------------------------------

    def _on_request(self, event: tx.RequestReceived, now: float) -> None:
        request = event.request
        method = request.method
        if method == "CANCEL":
            self._on_cancel(event, now)
            return
        if method not in ALLOW and method not in self.app_methods:
            self._reply(request, 405, now, headers=[("Allow", ", ".join(ALLOW))])
            return
        unsupported = [o for o in _options(request, "Require") if o.lower() not in SUPPORTED]
        if unsupported:
            self._reply(request, 420, now, headers=[("Unsupported", ", ".join(unsupported))])
            return
        if request.to.tag is not None:
            self._on_in_dialog(event, now)
            return
        if method in _IN_DIALOG_ONLY:
            self._reply(request, 481, now)
            return
        if method == "INVITE":
            self._on_invite(event, now)
            return
        if self._refused(event, None, now):
            return
        if method in self.app_methods:
            rid = self._new_handle()
            self._server[rid] = _ServerRequest(request, event.transaction_key, None, self._token())
            self._events.append(RequestReceived(None, rid, request))
        elif method == "OPTIONS":
            self._answer_options(request, now)
        elif method == "SUBSCRIBE":
            self._reply(request, 489, now)  # no event package of ours (RFC 6665 §4.2.1.1)
        else:
            self._reply(request, 405, now, headers=[("Allow", ", ".join(ALLOW))])

    def _answer_options(self, request: Request, now: float) -> None:
        # §11.2: what we would do with an INVITE: Allow, Accept, Supported and a session description
        body = self.capabilities_sdp() if self.capabilities_sdp is not None else b""
        h = [("Allow", ", ".join(ALLOW)), ("Accept", ", ".join(ACCEPT)),
             ("Supported", ", ".join(SUPPORTED))]
        if body:
            h.append(("Content-Type", SDP))
        self._reply(request, 200, now, headers=h, body=body)

    def _on_invite(self, event: tx.RequestReceived, now: float) -> None:
        request = event.request
        if request.body and request.content_type != SDP:
            self._reply(request, 415, now, headers=[("Accept", SDP)])
            return
        if not request.contact or not request.from_.tag:
            self._reply(request, 400, now, reason="Missing Contact or From tag")
            return
        replaces: Replaces | None = None
        replaces_call: int | None = None
        replaced: Dialog | None = None
        value = request.headers.get("Replaces")
        if value is not None:
            replaces = Replaces.parse(value)
            # RFC 3891 §3: the to-tag names our local tag, the from-tag their remote one
            replaces_call = self._by_dialog.get(DialogId(replaces.call_id, replaces.to_tag,
                                                         replaces.from_tag))
            old = self._calls.get(replaces_call) if replaces_call is not None else None
            if old is None or old.state == "terminated":
                self._reply(request, 481, now)
                return
            if replaces.early_only and old.state == "confirmed":
                self._reply(request, 486, now)
                return
            replaced = old.dialog
        if self._refused(event, replaced, now):
            return
        referred_by_s = request.headers.get("Referred-By")
        referred_by = NameAddr.parse(referred_by_s.strip()) if referred_by_s else None
        handle = self._new_handle()
        c = _Call(handle, False, "incoming", request, invite_key=event.transaction_key,
                  remote_sdp=request.body or None, replaces_call=replaces_call)
        self._calls[handle] = c
        self._by_invite_key[event.transaction_key] = handle
        self._events.append(IncomingInvite(handle, request, request.body or None, replaces,
                                           replaces_call, referred_by, event.source))

    def _refused(self, event: tx.RequestReceived, replaced: Dialog | None, now: float) -> bool:
        """Ask the policy; answer a refusal here. True when the request was refused."""
        dialogs = sum(1 for c in self._calls.values() if c.kind == "invite")
        refusal = self.policy.admit(Admission(event.request, event.source, now, replaced, dialogs))
        if refusal is None:
            return False
        log.debug("refused %s from %s:%d: %d %s", event.request.method, event.source.host, event.source.port,
                 refusal.status, refusal.reason or reason_phrase(refusal.status))
        self._reply(event.request, refusal.status, now, reason=refusal.reason, headers=refusal.headers)
        return True

    def _on_cancel(self, event: tx.RequestReceived, now: float) -> None:
        request = event.request
        handle = self._by_invite_key.get(event.cancels) if event.cancels is not None else None
        if handle is None:
            self._reply(request, 481, now)
            return
        self._reply(request, 200, now)
        c = self._calls.get(handle)
        pending = self._server.get(c.incoming_reinvite) if c is not None and c.incoming_reinvite else None
        if c is not None and pending is not None and pending.key == event.cancels:
            # a cancelled re-INVITE gets 487 and the session stays as it was (§14.2)
            del self._server[c.incoming_reinvite]  # type: ignore[arg-type]
            c.incoming_reinvite = None
            self.layer.send_response(make_response(pending.request, 487, headers=self._response_common()),
                                     now)
            return
        if c is not None and c.state in ("incoming", "early"):
            # §9.2: the INVITE gets 487 and the call never was
            tag = c.dialog.local_tag if c.dialog is not None else self._token()
            self.layer.send_response(make_response(c.invite, 487, to_tag=tag), now)
            self._forget(c, now)
            self._events.append(CallFailed(handle, 487, "Request Terminated"))

    def _on_in_dialog(self, event: tx.RequestReceived, now: float) -> None:
        request = event.request
        did = DialogId(request.call_id, request.to.tag or "", request.from_.tag or "")
        handle = self._by_dialog.get(did)
        c = self._calls.get(handle) if handle is not None else None
        if c is None or c.dialog is None:
            self._reply(request, 481, now)  # §12.2.2
            return
        dialog = c.dialog
        if not dialog.check_remote_cseq(request):
            self._reply(request, 500, now, reason="CSeq Out of Order")
            return
        method = request.method
        if method == "BYE":
            self._reply(request, 200, now)
            if c.state in ("incoming", "early") and not c.is_uac:
                # §15.1.2: a BYE in an early dialog: the INVITE gets 487
                self.layer.send_response(make_response(c.invite, 487), now)
                self._events.append(CallFailed(c.handle, 487, "Request Terminated"))
                self._forget(c, now)
                return
            self._end(c, "bye", now)
        elif method == "INVITE":
            self._on_reinvite(c, event, now)
        elif method == "NOTIFY" and _event_package(request) == "refer":
            self._on_refer_notify(c, request, now)
        elif method == "REFER":
            self._on_refer(c, event, now)
        elif method == "OPTIONS" and "OPTIONS" not in self.app_methods:
            self._answer_options(request, now)
        else:
            if method in ("SUBSCRIBE", "NOTIFY"):
                dialog.refresh_target(request)  # RFC 6665 §4.1.2.4, §4.2.1.3: target refreshes
            rid = self._new_handle()
            self._server[rid] = _ServerRequest(request, event.transaction_key, c.handle, None)
            self._events.append(RequestReceived(c.handle, rid, request))

    def _on_reinvite(self, c: _Call, event: tx.RequestReceived, now: float) -> None:
        request = event.request
        if request.body and request.content_type != SDP:
            self._reply(request, 415, now, headers=[("Accept", SDP)])
            return
        if c.state != "confirmed":
            self._reply(request, 491, now)
            return
        if c.reinvite is not None and c.reinvite[2] is not None:
            self._reply(request, 491, now)  # §14.2: glare with our own pending re-INVITE
            return
        if c.incoming_reinvite is not None or c.ok is not None:
            # §14.2: an INVITE in progress on the other side: 500 with Retry-After 0-10 s
            self._reply(request, 500, now, headers=[("Retry-After", str(self._rng.randint(0, 10)))])
            return
        rid = self._new_handle()
        self._server[rid] = _ServerRequest(request, event.transaction_key, c.handle, None)
        c.incoming_reinvite = rid
        self._by_invite_key[event.transaction_key] = c.handle  # a CANCEL may follow (§9.2)
        self._events.append(ReinviteReceived(c.handle, rid, request, request.body or None))

    def _on_refer(self, c: _Call, event: tx.RequestReceived, now: float) -> None:
        request = event.request
        targets = request.headers.get_lines("Refer-To")
        if len(targets) != 1:
            self._reply(request, 400, now, reason="Exactly one Refer-To")  # RFC 3515 §2.4.1
            return
        NameAddr.parse(targets[0].strip())  # malformed: 400 from the pump
        rid = self._new_handle()
        self._server[rid] = _ServerRequest(request, event.transaction_key, c.handle, None)
        self._events.append(RequestReceived(c.handle, rid, request))

    def _on_refer_notify(self, c: _Call, request: Request, now: float) -> None:
        if request.content_type != SIPFRAG:
            self._reply(request, 415, now, headers=[("Accept", SIPFRAG)])
            return
        event_value = request.headers.get("Event") or ""
        ident: int | None = None
        for part in event_value.split(";")[1:]:
            name, _, value = part.strip().partition("=")
            if name.lower() == "id" and value.strip().isdigit():
                ident = int(value)
        if ident is None and len(c.refers) == 1:
            ident = next(iter(c.refers))  # RFC 3515 §2.4.6: id may be left out for the first REFER
        op = c.refers.get(ident) if ident is not None else None
        if op is None:
            self._reply(request, 481, now)
            return
        status, reason = _sipfrag_status(request.body)
        if status is None:
            self._reply(request, 400, now, reason="Bad sipfrag")
            return
        terminated = _subscription_state(request) == "terminated"
        self._reply(request, 200, now)
        if terminated:
            assert ident is not None
            del c.refers[ident]
        self._events.append(ReferNotified(c.handle, op, status, reason, terminated))

    def _on_ack(self, ack: Request, now: float) -> None:
        did = DialogId(ack.call_id, ack.to.tag or "", ack.from_.tag or "")
        handle = self._by_dialog.get(did)
        c = self._calls.get(handle) if handle is not None else None
        if c is None or c.ok is None or ack.cseq.seq != c.ok_seq:
            return  # a retransmitted ACK, or one for a dialog that has gone
        c.ok = None
        c.ok_next = None
        if ack.body:
            c.remote_sdp = ack.body  # late offer: the answer rides on the ACK (§13.2.1)
        if c.state == "answered":
            c.state = "confirmed"
            assert c.dialog is not None
            c.dialog.confirm()
            self._events.append(CallEstablished(c.handle, c.remote_sdp))
            if c.replaces_call is not None:
                old = self._calls.get(c.replaces_call)
                if old is not None and old.dialog is not None and old.state == "confirmed":
                    self._send_bye(old, now)
                    self._end(old, "replaced", now)

    # Responses ------------------------------------------------------------------------------------

    def _on_response(self, response: Response, key: TransactionKey | None, now: float) -> None:
        method = response.cseq.method
        if method == "INVITE":
            self._on_invite_response(response, key, now)
            return
        if key is not None and key in self._reg_keys():
            self._on_register_response(key, response, now)
            return
        if key is None or key not in self._client:
            return
        if response.status < 200:
            return
        retry = self._auth_retry(key, response, now)
        if retry is not None:
            self._client[retry] = self._client.pop(key)
            return
        op, handle, kind = self._client.pop(key)
        c = self._calls.get(handle) if handle is not None else None
        if c is not None and c.state == "subscribing":
            if response.status < 300 and response.to.tag:
                c.dialog = Dialog.from_uac(c.invite, response, self.local_contact)
                self._by_dialog[c.dialog.id] = c.handle
                c.state = "confirmed"
            else:
                self._forget(c, now)
            self._events.append(RequestCompleted(op, response))
            return
        if c is not None and c.dialog is not None and response.status in (408, 481) and kind != "BYE":
            # §12.2.1.2: the dialog is gone on their side
            if not c.is_uac and c.state in ("incoming", "early"):
                # §15: a callee ends an early dialog with a final response to the INVITE, never
                # with BYE; without one the INVITE's server transaction would wait for ever
                tag = c.dialog.local_tag
                self.layer.send_response(make_response(c.invite, 487, to_tag=tag,
                                                       headers=self._response_common()), now)
                self._forget(c, now)
                self._events.append(CallFailed(c.handle, 487, "Request Terminated"))
            else:
                self._send_bye(c, now)
                self._end(c, "timeout", now)
        self._events.append(RequestCompleted(op, response))

    def _on_invite_response(self, response: Response, key: TransactionKey | None, now: float) -> None:
        handle = self._by_invite_key.get(key) if key is not None else None
        c = self._calls.get(handle) if handle is not None else None
        if c is None:
            self._ack_stray_2xx(response)
            return
        if c.reinvite is not None and key is not None and c.reinvite[2] == key:
            self._on_reinvite_response(c, response, now)
            return
        if response.cseq.seq != c.invite.cseq.seq:
            # a 2xx retransmission for an earlier re-INVITE: ACK again
            if 200 <= response.status < 300:
                self._resend_ack(c, response.cseq.seq)
            return
        status = response.status
        if status < 200:
            if c.state not in ("calling", "early"):
                return
            if response.to.tag and c.dialog is None and response.contact:
                c.dialog = Dialog.from_uac(c.invite, response, self.local_contact)
                self._by_dialog[c.dialog.id] = c.handle
                c.state = "early"
            if c.cancel_wanted and not c.cancelled:
                self._send_cancel(c, now)
            if status > 100:
                self._events.append(CallProgress(c.handle, response))
            return
        if status >= 300:
            if c.state in ("calling", "early") and key is not None and not c.cancel_wanted:
                retry = self._auth_retry(key, response, now)
                if retry is not None:
                    c.invite = self._sent[retry].request
                    c.invite_key = retry
                    self._by_invite_key[retry] = c.handle
                    if c.dialog is not None:  # an early dialog ends with the final response
                        self._by_dialog.pop(c.dialog.id, None)
                        c.dialog = None
                        c.state = "calling"
                    return
            if c.state in ("calling", "early"):
                self._forget(c, now)
                self._events.append(CallFailed(c.handle, status, response.reason))
            return
        # 2xx
        if c.state in ("confirmed", "terminated") or (
                c.dialog is not None and c.dialog.state is DialogState.CONFIRMED):
            if c.dialog is not None and response.to.tag == c.dialog.remote_tag:
                self._resend_ack(c, response.cseq.seq)
            else:
                self._ack_and_bye(c.invite, response, now)  # a forked 2xx we do not want
            return
        if c.dialog is None or c.dialog.remote_tag != response.to.tag:
            if c.dialog is not None:
                self._by_dialog.pop(c.dialog.id, None)
            c.dialog = Dialog.from_uac(c.invite, response, self.local_contact)
            self._by_dialog[c.dialog.id] = c.handle
        else:
            c.dialog.update_from_response(response)
        c.dialog.confirm()
        body = b""
        hold_ack = False
        if response.body:
            c.remote_sdp = response.body
            if c.local_sdp is None:
                if c.answer_for is not None:
                    body = c.answer_for(response.body)
                    c.local_sdp = body
                else:
                    hold_ack = not c.cancel_wanted  # 3PCC: the answer comes from elsewhere
        if hold_ack:
            c.ack_pending = c.invite.cseq.seq
        else:
            self._send_ack(c, c.invite.cseq.seq, body)
        if c.cancel_wanted:
            # §9.1: the 2xx raced our CANCEL: the call goes up and comes down again at once
            self._send_bye(c, now)
            self._forget(c, now)
            self._events.append(CallFailed(c.handle, 487, "Request Terminated"))
            return
        c.state = "confirmed"
        self._events.append(CallEstablished(c.handle, c.remote_sdp))

    def _on_reinvite_response(self, c: _Call, response: Response, now: float) -> None:
        assert c.reinvite is not None and c.dialog is not None
        op, request, _key, sdp, retries = c.reinvite
        status = response.status
        if status < 200:
            return
        if 200 <= status < 300:
            c.dialog.update_from_response(response)
            body = b""
            hold_ack = False
            if response.body:
                c.remote_sdp = response.body
                if sdp is None and c.reinvite_answer_for is not None:
                    body = c.reinvite_answer_for(response.body)
                    c.local_sdp = body
                elif sdp is None:
                    hold_ack = True
            if sdp is not None:
                c.local_sdp = sdp
            if hold_ack:
                c.ack_pending = request.cseq.seq
            else:
                self._send_ack(c, request.cseq.seq, body)
            c.reinvite = None
            self._events.append(ReinviteCompleted(c.handle, op, response))
            return
        if status in (401, 407) and _key is not None:
            retry = self._auth_retry(_key, response, now)
            if retry is not None:
                c.reinvite = (op, self._sent[retry].request, retry, sdp, retries)
                self._by_invite_key[retry] = c.handle
                return
        if status == 491 and retries < _GLARE_RETRIES:
            # §14.1: the Call-ID owner waits 2.1-4 s, the other side 0-2 s, in 10 ms units
            low, high = (210, 400) if c.dialog.is_uac else (0, 200)
            c.reinvite = (op, request, None, sdp, retries + 1)
            c.reinvite_retry_at = now + self._rng.randint(low, high) / 100
            return
        c.reinvite = None
        self._events.append(ReinviteCompleted(c.handle, op, response))
        if status in (408, 481):
            self._send_bye(c, now)
            self._end(c, "timeout", now)

    def _ack_stray_2xx(self, response: Response) -> None:
        """A 2xx retransmitted after its INVITE transaction ended (§13.2.2.4): the ACK again."""
        if not 200 <= response.status < 300:
            return
        did = DialogId(response.call_id, response.from_.tag or "", response.to.tag or "")
        handle = self._by_dialog.get(did)
        c = self._calls.get(handle) if handle is not None else None
        if c is not None:
            self._resend_ack(c, response.cseq.seq)

    def _on_client_failure(self, key: TransactionKey, now: float) -> None:
        self._sent.pop(key, None)
        for r in list(self._regs.values()):
            if r.key == key:
                self._register_failed(r, 408, "Request Timeout", now)
                return
        handle = self._by_invite_key.get(key)
        if handle is not None:
            c = self._calls.get(handle)
            if c is not None and c.is_uac and c.state in ("calling", "early"):
                self._forget(c, now)
                self._events.append(CallFailed(handle, 408, "Request Timeout"))
            elif c is not None and c.reinvite is not None and c.reinvite[2] == key:
                op = c.reinvite[0]
                c.reinvite = None
                self._events.append(ReinviteCompleted(handle, op, None))
                self._send_bye(c, now)
                self._end(c, "timeout", now)
            return
        entry = self._client.pop(key, None)
        if entry is None:
            return
        op, call, kind = entry
        c = self._calls.get(call) if call is not None else None
        if c is not None and c.state == "subscribing":
            self._forget(c, now)
        if c is not None and kind != "BYE" and c.state == "confirmed":
            self._end(c, "timeout", now)  # §12.2.1.2: a timeout ends the dialog
        self._events.append(RequestCompleted(op, None))

    # Sending helpers ----------------------------------------------------------------------------

    def _send_reinvite(self, c: _Call, now: float) -> None:
        assert c.reinvite is not None and c.dialog is not None
        op, _old, _key, sdp, retries = c.reinvite
        request = c.dialog.create_request("INVITE", headers=self._request_common(), body=sdp or b"",
                                          content_type=SDP)
        key = self._send(request, c.dialog.destination(), c.dialog, now)
        c.reinvite = (op, request, key, sdp, retries)
        self._by_invite_key[key] = c.handle

    def _send_cancel(self, c: _Call, now: float) -> None:
        if c.invite_key is None or c.cancelled:
            return
        c.cancelled = True
        key = self.layer.cancel(c.invite_key, now)
        self._client[key] = (self._new_handle(), None, "CANCEL")

    def _send_ack(self, c: _Call, seq: int, body: bytes) -> None:
        assert c.dialog is not None
        ack = c.dialog.create_ack(seq, body, SDP if body else None)
        for name, value in self._request_common():
            ack.headers.add(name, value)
        destination = c.dialog.destination()
        self.layer.send_ack(ack, destination)
        c.acks[seq] = (ack, destination)

    def _resend_ack(self, c: _Call, seq: int) -> None:
        sent = c.acks.get(seq)
        if sent is not None:
            self.layer.send_ack(sent[0], sent[1])

    def _ack_and_bye(self, invite: Request, response: Response, now: float) -> None:
        dialog = Dialog.from_uac(invite, response, self.local_contact)
        self.layer.send_ack(dialog.create_ack(invite.cseq.seq), dialog.destination())
        self.layer.send_request(dialog.create_request("BYE"), dialog.destination(), now)

    def _send_bye(self, c: _Call, now: float) -> int:
        if c.dialog is None or c.dialog.state is DialogState.TERMINATED:
            return 0
        if c.kind != "invite":
            c.dialog.terminate()  # a subscription ends by NOTIFY or expiry, never by BYE
            return 0
        op = self._new_handle()
        request = c.dialog.create_request("BYE", headers=self._request_common())
        key = self._send(request, c.dialog.destination(), c.dialog, now)
        self._client[key] = (op, None, "BYE")
        c.dialog.terminate()
        return op

    @staticmethod
    def _fits(response: Response) -> bool:
        fits = fits_transport(response, len(response.to_bytes()))
        if not fits:
            log.warning("a %d to %s does not fit in a UDP datagram: answering 513 instead",
                        response.status, response.cseq.method)
        return fits

    def _reply(self, request: Request, status: int, now: float, *, reason: str | None = None,
               headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> None:
        if request.method == "ACK":
            return
        h = [*headers, *self._response_common()]
        self.layer.send_response(make_response(request, status, reason, to_tag=self._token(),
                                               headers=h, body=body), now)

    def _common_headers(self, h: Headers) -> None:
        for name, value in self._request_common():
            h.add(name, value)
        h.add("Allow", ", ".join(ALLOW))
        h.add("Supported", ", ".join(SUPPORTED))

    def _request_common(self) -> list[tuple[str, str]]:
        return [("User-Agent", self.user_agent)] if self.user_agent else []

    def _response_common(self) -> list[tuple[str, str]]:
        return [("Server", self.user_agent)] if self.user_agent else []

    # Bookkeeping --------------------------------------------------------------------------------

    def _new_handle(self) -> int:
        self._next += 1
        return self._next

    def _call(self, call: int) -> _Call:
        c = self._calls.get(call)
        if c is None:
            raise UAError(f"no call {call}")
        return c

    def _end(self, c: _Call, reason: str, now: float) -> None:
        was_up = c.state in ("confirmed", "answered")
        self._forget(c, now)
        if was_up or reason in ("replaced", "no-ack"):
            self._events.append(CallTerminated(c.handle, reason))

    def _forget(self, c: _Call, now: float) -> None:
        """Terminated dialogs and calls are removed at once; their transactions end on their own."""
        c.state = "terminated"
        c.ok = None
        c.ok_next = None
        c.reinvite_retry_at = None
        if c.dialog is not None:
            c.dialog.terminate()
            self._by_dialog.pop(c.dialog.id, None)
        self._calls.pop(c.handle, None)
        for key in [k for k, h in self._by_invite_key.items() if h == c.handle]:
            del self._by_invite_key[key]
        for rid in [r for r, sr in self._server.items() if sr.call == c.handle]:
            # a request the application has not answered yet would hold its transaction forever
            sr = self._server.pop(rid)
            self.layer.send_response(make_response(sr.request, 481, headers=self._response_common()),
                                     now)


def referred_request(refer: Request) -> tuple[URI, list[tuple[str, str]]]:
    """What a REFER asks the referee to send (RFC 3515 §2.4.2): the target URI without its
    embedded headers, and the headers to send with it: an embedded ``Replaces`` (RFC 3891 §3)
    and the REFER's ``Referred-By`` (RFC 3892 §3: the referee copies it into the triggered
    request). Raises `SIPParseError` for a REFER without one well-formed Refer-To."""
    values = refer.headers.get_lines("Refer-To")
    if len(values) != 1:
        raise SIPParseError("Exactly one Refer-To")
    target = NameAddr.parse(values[0].strip()).uri
    headers: list[tuple[str, str]] = []
    replaces = target.header("Replaces")
    if replaces is not None:
        headers.append(("Replaces", str(Replaces.parse(replaces))))
    referred_by = refer.headers.get("Referred-By")
    if referred_by is not None:
        headers.append(("Referred-By", referred_by.strip()))
    return target.replace(headers=()), headers


def _options(request: Request, name: str) -> list[str]:
    return [v.strip() for v in request.headers.get_all(name) if v.strip()]


def _subscription_state(request: Request) -> str:
    value = request.headers.get("Subscription-State") or ""
    return value.split(";", 1)[0].strip().lower()


def _event_package(request: Request) -> str:
    value = request.headers.get("Event") or ""
    return value.split(";", 1)[0].strip().lower()


def _sipfrag_status(body: bytes) -> tuple[int | None, str]:
    """The status line of a ``message/sipfrag`` body (RFC 3420): ``SIP/2.0 200 OK``."""
    line = body.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    parts = line.split(" ", 2)
    if len(parts) < 2 or parts[0].upper() != "SIP/2.0" or not parts[1].isdigit() or len(parts[1]) != 3:
        return None, ""
    return int(parts[1]), parts[2] if len(parts) == 3 else ""
