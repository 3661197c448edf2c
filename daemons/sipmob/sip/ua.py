"""The SIP user-agent core (RFC 3261 §8, §12-§15; RFC 3515, 3891, 3892), sans-I/O.

Responsible for what a UA does with the requests and responses its `TransactionLayer` delivers:
INVITE sessions as a UAC and a UAS (early and late offer, CANCEL, the UAS's 2xx retransmission until
the ACK arrives and BYE when it never does, §13.3.1.4; the UAC's ACK for every 2xx, §13.2.2.4),
re-INVITE with 491 glare and the §14.1 randomised back-off, BYE, OPTIONS answered with our
capabilities, INFO, REFER within a dialog and outside one, with its implicit subscription and
``message/sipfrag`` NOTIFYs (RFC 3515), INVITE with Replaces (RFC 3891: 481 when no dialog matches,
BYE on the replaced dialog once the new one is confirmed), and the checks every UAS makes first: 481
for a request outside any dialog we know, 500 for an out-of-order CSeq (§12.2.2), 405 with Allow,
415, 420; PRACK for reliable provisional responses (RFC 3262, `sipmob.sip.prack`).

Calls are numbered handles; the application learns of things through events (`next_event`) and acts
with methods that take ``now``. Everything to send comes out of `messages_to_send`, and the next
deadline (the layer's or ours) out of `get_timer`.

The core is split by usage, one module each, composed here: `sipmob.sip.invite` (INVITE sessions
and glare), `sipmob.sip.refer` (REFER, NOTIFY and subscriptions), `sipmob.sip.register` (REGISTER),
`sipmob.sip.challenge` (the Digest retry); their shared state is `sipmob.sip.uabase`, the call
states and their arrows `sipmob.sip.callstate`, the events `sipmob.sip.uaevents`. This module
keeps the machine's face (`receive`, `messages_to_send`, `next_event`, `get_timer`, `handle_timer`)
and the dispatch of what the transaction layer delivers, with the one entry point of every
request outside a dialog (`_on_out_of_dialog`).

Not here: SDP (`sipmob.sdp`: bodies are opaque bytes to the core), sockets and the reactor
(`sipmob.service.sipua`), DNS.

Also part of the core (`sipmob.sip.challenge`, `sipmob.sip.register`): answering Digest challenges
(RFC 3261 §22.2-22.3 with RFC 7616/8760 via `sipmob.sip.auth`): a request answered 401 or 407 is
sent again, once per challenge, with a new CSeq and branch and the credentials the application gave;
and REGISTER bindings (§10.2) kept fresh by `register`: the refresh goes out at half the expiry the
registrar granted, a 423 is retried with its Min-Expires, and after a failure the next attempt waits
as RFC 5626 §4.5 says (30 s doubling up to 30 min, then a random 50-100 % of that)."""

from __future__ import annotations

from collections.abc import Sequence

from sipmob.sip import transaction as tx
from sipmob.sip.callstate import SETTING_UP, UNANSWERED, CallInput, CallState
from sipmob.sip.dialog import Dialog, DialogId
from sipmob.sip.invite import InviteSessions
from sipmob.sip.message import Request, Response, make_response
from sipmob.sip.refer import Referrals, Referred, _event_package, referred, referred_request
from sipmob.sip.register import Registrations
from sipmob.sip.transaction import TransactionKey
from sipmob.sip.transport import Address
from sipmob.sip.uabase import (
    _IN_DIALOG_ONLY,
    ACCEPT,
    ALLOW,
    REFER_EXPIRES,
    SDP,
    SIPFRAG,
    SUPPORTED,
    _Call,
    _ClientOp,
    _options,
    _ServerRequest,
)
from sipmob.sip.uaevents import (
    CallEstablished,
    CallFailed,
    CallProgress,
    CallTerminated,
    CredentialsLookup,
    IncomingInvite,
    ReferNotified,
    Registered,
    RegistrationFailed,
    ReinviteCompleted,
    ReinviteReceived,
    RequestCompleted,
    RequestReceived,
    UAError,
    UAEvent,
    Unregistered,
)
from sipmob.sip.uri import URI

__all__ = [
    "ACCEPT",
    "ALLOW",
    "REFER_EXPIRES",
    "SDP",
    "SIPFRAG",
    "SUPPORTED",
    "CallEstablished",
    "CallFailed",
    "CallProgress",
    "CallState",
    "CallTerminated",
    "CredentialsLookup",
    "IncomingInvite",
    "ReferNotified",
    "Referred",
    "Registered",
    "RegistrationFailed",
    "ReinviteCompleted",
    "ReinviteReceived",
    "RequestCompleted",
    "RequestReceived",
    "UACore",
    "UAError",
    "UAEvent",
    "Unregistered",
    "referred",
    "referred_request",
]


class UACore(InviteSessions, Referrals, Registrations):
    """One SIP user agent: its calls, dialogs and the transactions under them.

    `local` are the addresses we listen on (the first one is our Contact); `capabilities_sdp`
    is the body of our OPTIONS answers (RFC 3261 §11.2). `token` makes tags, Call-IDs and branches;
    `rng` draws the §14.1 back-off: tests pass deterministic ones.
    """

    # The machine's deadline -----------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest deadline of all: the transaction layer's and the core's own."""
        deadlines = [d for d in (self.layer.get_timer(),) if d is not None]
        deadlines += self._invite_deadlines()
        deadlines += self._timer_deadlines()
        deadlines += self._registration_deadlines()
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        self.layer.handle_timer(now)
        self._pump(now)
        self._invite_timers(now)
        self._timer_fire(now)
        self._registration_timers(now)
        self._pump(now)

    # Input ----------------------------------------------------------------------------------------

    def receive(self, data: bytes, source: Address, now: float, local: Address | None = None) -> None:
        """One message from the network (`local`: our address it arrived on, see
        `TransactionLayer.receive`); never raises for the peer's mistakes."""
        self.layer.receive(data, source, now, local)
        self._pump(now)

    def transport_error(self, destination: Address, now: float) -> None:
        self.layer.transport_error(destination, now)
        self._pump(now)

    # Our address --------------------------------------------------------------------------------

    def set_local(self, local: Sequence[Address], now: float) -> None:
        """Our address changed (HMMP; a multihomed host's egress failed): Via, our Contact and the
        Contact of every dialog follow from now on, and each binding is REGISTERed again at once
        with the new Contact, the old one removed in the same request (§10.2.2). The re-INVITEs
        that tell the peers are the application's: they carry its new SDP."""
        old = self.contact_uri
        first = local[0]
        self.contact_uri = old.replace(host=first.host, port=first.port)
        self.layer.set_local(list(local))
        for c in self._calls.values():
            if c.dialog is not None:
                c.dialog.local_contact = self.local_contact
        for r in self._regs.values():
            if r.state in ("registered", "failed") and r.key is None:
                r.stale_contact = old if r.state == "registered" else None
                r.refresh_at = None
                r.state = "registering" if r.state == "failed" else r.state
                self._send_register(r, r.expires, now)
        self._pump(now)

    # Out of dialog --------------------------------------------------------------------------------

    def request(self, method: str, target: URI, now: float, *,
                headers: Sequence[tuple[str, str]] = (), body: bytes = b"",
                content_type: str | None = None, destination: Address | None = None,
                local: Address | None = None) -> int:
        """Send a request outside any dialog (OPTIONS, MESSAGE...); returns the op number of its
        `RequestCompleted`. `destination` sends it there rather than where `target` says (an
        outbound proxy, §8.1.2); `local` sends it from that address of ours, Via naming it (a
        multihomed gateway's egress), until its final response."""
        if method in ("INVITE", "ACK", "CANCEL"):
            raise UAError(f"use invite/cancel for {method}")
        op = self._new_handle()
        h = self._out_of_dialog_headers(method, target)
        if method in ("SUBSCRIBE", "REFER"):
            h.add("Contact", str(self.local_contact))
        self._common_headers(h)
        for name, value in headers:
            h.add(name, value)
        if body:
            h.add("Content-Type", content_type or SDP)
        request = Request(method, target.replace(headers=()), h, body)
        if local is not None:
            self.layer.bind_call(request.call_id, local)
        key = self._send(request, destination or self.next_hop(target), None, now)
        self._client[key] = _ClientOp(op, None, method, request.call_id if local is not None else None)
        self._pump(now)
        return op

    # A call taken up again ---------------------------------------------------------------------------

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
        if method not in self.allow and method not in self.app_methods:
            self._reply(request, 405, now, headers=[("Allow", ", ".join(self.allow))])
            return
        unsupported = [o for o in _options(request, "Require")
                       if (o.lower() not in SUPPORTED and not (o.lower() == "timer" and self.session_policy))
                       or (o.lower() == "100rel" and "PRACK" not in self.allow)]
        if unsupported:
            self._reply(request, 420, now, headers=[("Unsupported", ", ".join(unsupported))])
            return
        if request.to.tag is not None:
            self._on_in_dialog(event, now)
            return
        self._on_out_of_dialog(event, now)

    def _on_out_of_dialog(self, event: tx.RequestReceived, now: float) -> None:
        """Every request outside a dialog comes through here, once the checks every UAS makes
        (405, 420) have passed: the one place that decides whether such a request acts."""
        request = event.request
        method = request.method
        if method == "INVITE":
            self._on_invite(event, now)  # asks the policy once it knows the dialog Replaces names
            return
        refer_outside = method == "REFER" and "REFER" in self.app_methods
        if method in _IN_DIALOG_ONLY and not refer_outside:
            self._reply(request, 481, now)
            return
        if self._refused(event, None, now):
            return
        if refer_outside:
            # RFC 3515 §2.4.1 outside a dialog too; the application decides whether to act
            if self._check_refer(request, now):
                rid = self._new_handle()
                self._server[rid] = _ServerRequest(request, event.transaction_key, None, self._token(),
                                                   source=event.source.host)
                self._events.append(RequestReceived(None, rid, request))
            return
        if method in self.app_methods:
            rid = self._new_handle()
            self._server[rid] = _ServerRequest(request, event.transaction_key, None, self._token(),
                                               source=event.source.host)
            self._events.append(RequestReceived(None, rid, request))
        elif method == "OPTIONS":
            self._answer_options(request, now)
        elif method == "SUBSCRIBE":
            self._reply(request, 489, now)  # no event package of ours (RFC 6665 §4.2.1.1)
        else:
            self._reply(request, 405, now, headers=[("Allow", ", ".join(self.allow))])

    def _answer_options(self, request: Request, now: float) -> None:
        # §11.2: what we would do with an INVITE: Allow, Accept, Supported and a session description
        body = self.capabilities_sdp() if self.capabilities_sdp is not None else b""
        h = [("Allow", ", ".join(self.allow)), ("Accept", ", ".join(ACCEPT)),
             ("Supported", ", ".join(SUPPORTED))]
        if body:
            h.append(("Content-Type", SDP))
        self._reply(request, 200, now, headers=h, body=body)

    def _on_in_dialog(self, event: tx.RequestReceived, now: float) -> None:
        request = event.request
        did = DialogId(request.call_id, request.to.tag or "", request.from_.tag or "")
        handle = self._by_dialog.get(did)
        c = self._calls.get(handle) if handle is not None else None
        if c is None and request.method == "NOTIFY":
            c = self._notify_before_2xx(request)
        if c is None or c.dialog is None:
            self._reply(request, 481, now)  # §12.2.2
            return
        dialog = c.dialog
        if not dialog.cseq_in_order(request) or not self._above_pending(c, request):
            self._reply(request, 500, now, reason="CSeq Out of Order")
            return
        if self._refused(event, None, now, dialog=dialog, peer=c.peer_host):
            return  # nothing of the dialog moved: the peer's next CSeq is still in order
        method = request.method
        if method == "BYE" or (method == "OPTIONS" and "OPTIONS" not in self.app_methods):
            dialog.accept_remote_cseq(request)  # the core acts on it here and now
        # a PRACK or a REFER's NOTIFY is accepted where the core finds it names what it should
        # (`_on_prack`, `_on_refer_notify`); the rest by the answer the application gives it,
        # unless that is a 4xx (`_accept_in_dialog`)
        if method == "BYE":
            self._reply(request, 200, now)
            if c.state in UNANSWERED and not c.is_uac:
                # §15.1.2: a BYE in an early dialog: the INVITE gets 487
                self.layer.send_response(make_response(c.invite, 487), now)
                self._events.append(CallFailed(c.handle, 487, "Request Terminated"))
                self._forget(c, now)
                return
            self._end(c, "bye", now)
        elif method == "INVITE":
            self._on_reinvite(c, event, now)
        elif method == "PRACK":
            self._on_prack(c, event, now)
        elif method == "NOTIFY" and _event_package(request) == "refer":
            self._on_refer_notify(c, request, now)
        elif method == "REFER":
            self._on_refer(c, event, now)
        elif method == "OPTIONS" and "OPTIONS" not in self.app_methods:
            self._answer_options(request, now)
        else:
            if method == "UPDATE" and c.state is not CallState.CONFIRMED and not self._early_update_ok(
                    c, request, now):
                return
            timer_decision = None
            if method == "UPDATE" and c.state is CallState.CONFIRMED:
                go_on, timer_decision = self._timer_decide(request, now)  # RFC 4028 §9
                if not go_on:
                    return
            rid = self._new_handle()
            self._server[rid] = _ServerRequest(request, event.transaction_key, c.handle, None, timer_decision)
            self._events.append(RequestReceived(c.handle, rid, request))

    def _above_pending(self, c: _Call, request: Request) -> bool:
        """§12.2.2 for requests of the dialog still waiting for the application's answer: their
        CSeq is recorded only by an answer that accepts them, yet one that comes later with a lower
        number is out of order all the same."""
        if request.method in ("ACK", "CANCEL"):
            return True
        seq = request.cseq.seq
        return all(sr.request.cseq.seq < seq for sr in self._server.values()
                   if sr.call == c.handle and sr.request.to.tag is not None)

    def _notify_before_2xx(self, notify: Request) -> _Call | None:
        """RFC 6665 §4.1.2.4, RFC 3515 §2.4.5: a NOTIFY may overtake the 2xx to our SUBSCRIBE or
        REFER; it makes the dialog (as a UAS's would be made from it), and the 2xx just completes."""
        tag = notify.to.tag or ""
        for c in self._calls.values():
            if (c.state is CallState.SUBSCRIBING and c.invite.call_id == notify.call_id
                    and c.invite.from_.tag == tag and notify.from_.tag and notify.contact):
                dialog = Dialog.from_uas(notify, tag, self.local_contact, confirmed=True,
                                         initial_seq=c.invite.cseq.seq + 1)
                dialog.remote_seq = notify.cseq.seq - 1  # this NOTIFY is in order
                c.dialog = dialog
                self._by_dialog[dialog.id] = c.handle
                self._move(c, CallInput.SUBSCRIBED)
                return c
        return None

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
            entry = self._client.pop(key)
            self._client[retry] = entry
            if entry.method == "REFER":
                self._refer_resent(entry, response.cseq.seq, self._sent[retry].request)
            return
        entry = self._client.pop(key)
        if entry.bound is not None:
            self.layer.bind_call(entry.bound, None)
        op, handle, kind = entry.op, entry.call, entry.method
        c = self._calls.get(handle) if handle is not None else None
        if c is not None and kind == "UPDATE" and self._refresh_completed(c, key, response, now):
            return
        if c is not None and c.state is CallState.SUBSCRIBING:
            if response.status < 300 and response.to.tag:
                c.dialog = Dialog.from_uac(c.invite, response, self.local_contact)
                self._by_dialog[c.dialog.id] = c.handle
                self._move(c, CallInput.SUBSCRIBED)
            else:
                self._forget(c, now)
            self._events.append(RequestCompleted(op, response))
            return
        if kind == "PRACK":
            return  # RFC 3262: the INVITE goes on whatever became of a PRACK; nobody waits for it
        if c is not None and c.dialog is not None and response.status in (408, 481) and kind != "BYE":
            # §12.2.1.2: the dialog is gone on their side
            if not c.is_uac and c.state in UNANSWERED:
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

    def _refer_resent(self, entry: _ClientOp, old_seq: int, request: Request) -> None:
        """A REFER sent again with credentials has a new CSeq, which its NOTIFYs name in their
        Event id (RFC 3515 §2.4.6); a REFER outside a dialog also makes its dialog from it."""
        c = self._calls.get(entry.call) if entry.call is not None else None
        if c is None:
            return
        if old_seq in c.refers:
            c.refers[request.cseq.seq] = c.refers.pop(old_seq)
        if c.state is CallState.SUBSCRIBING:
            c.invite = request

    def _on_client_failure(self, key: TransactionKey, now: float) -> None:
        self._sent.pop(key, None)
        for r in list(self._regs.values()):
            if r.key == key:
                self._register_failed(r, 408, "Request Timeout", now)
                return
        handle = self._by_invite_key.get(key)
        if handle is not None:
            c = self._calls.get(handle)
            if c is not None and c.is_uac and c.state in SETTING_UP:
                self._forget(c, now)
                self._events.append(CallFailed(handle, 408, "Request Timeout"))
            elif c is not None and c.reinvite is not None and c.reinvite.key == key:
                op = c.reinvite.op
                c.reinvite = None
                self._events.append(ReinviteCompleted(handle, op, None))
                self._send_bye(c, now)
                self._end(c, "timeout", now)
            return
        entry = self._client.pop(key, None)
        if entry is None:
            return
        if entry.bound is not None:
            self.layer.bind_call(entry.bound, None)
        op, call, kind = entry.op, entry.call, entry.method
        c = self._calls.get(call) if call is not None else None
        if c is not None and kind == "UPDATE":
            self._refresh_completed(c, key, None, now)
        if c is not None and c.state is CallState.SUBSCRIBING:
            self._forget(c, now)
        if c is not None and kind not in ("BYE", "PRACK") and c.state is CallState.CONFIRMED:
            self._end(c, "timeout", now)  # §12.2.1.2: a timeout ends the dialog
        self._events.append(RequestCompleted(op, None))
