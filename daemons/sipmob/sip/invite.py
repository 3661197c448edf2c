"""INVITE sessions (RFC 3261 §13-§15; RFC 3891) as a UAC and a UAS, with re-INVITE and glare.

Responsible for: early and late offer, CANCEL (§9), the UAS's 2xx retransmitted until the ACK
arrives and BYE when it never does (§13.3.1.4), the UAC's ACK for every 2xx (§13.2.2.4) and BYE for a
forked one we do not want, re-INVITE with 491 glare and the §14.1 randomised back-off, BYE, and an
INVITE with Replaces (RFC 3891: 481 when no dialog matches, BYE on the replaced dialog once the new
one is confirmed).

Reliable provisional responses (RFC 3262): as a UAS, every 1xx to an INVITE that asks for them
goes reliably and the 2xx waits for the PRACKs (`sipmob.sip.prack` keeps the order and the
retransmissions); as a UAC, each new reliable 1xx is acknowledged with PRACK, with the answer to an
offer it carries when the INVITE had none (§5).

Not here: SDP (bodies are opaque bytes), requests within a dialog other than INVITE and BYE
(`sipmob.sip.refer`), the dispatch of what arrives (`sipmob.sip.ua`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from sipmob.sip import transaction as tx
from sipmob.sip.callstate import SETTING_UP, UNANSWERED, CallInput, CallState
from sipmob.sip.dialog import Dialog, DialogId, DialogState
from sipmob.sip.headers import Replaces
from sipmob.sip.message import Request, Response, make_response
from sipmob.sip.prack import (
    PrackError,
    RAck,
    ReliableProvisionals,
    ReliableReceiver,
    Verdict,
    rseq_of,
    uas_wants_reliable,
)
from sipmob.sip.session_refresh import SessionRefreshes
from sipmob.sip.transaction import TransactionKey
from sipmob.sip.uabase import _GLARE_RETRIES, SDP, _Call, _ClientOp, _Reinvite, _ServerRequest
from sipmob.sip.uaevents import (
    CallEstablished,
    CallFailed,
    CallProgress,
    IncomingInvite,
    ReinviteCompleted,
    ReinviteReceived,
    RequestReceived,
    UAError,
)
from sipmob.sip.uri import URI, NameAddr


class InviteSessions(SessionRefreshes):
    # Outgoing calls -------------------------------------------------------------------------------

    def invite(self, target: URI, sdp: bytes | None, now: float, *,
               headers: Sequence[tuple[str, str]] = (),
               answer_for: Callable[[bytes], bytes] | None = None) -> int:
        """Send an INVITE to `target` (with our offer, or none for a late offer: then `answer_for`
        gives the answer the ACK carries for the offer in the 2xx; without it the ACK waits for
        `ack`, as third-party call control needs, RFC 3725 §4). Returns the call handle."""
        handle = self._new_handle()
        h = self._out_of_dialog_headers("INVITE", target)
        h.add("Contact", str(self.local_contact))
        self._common_headers(h)
        for name, value in headers:
            h.add(name, value)
        if h.get("Session-Expires") is None:
            for name, value in self._timer_request_headers(None):
                if name != "Supported":  # said with our other extensions already
                    h.add(name, value)
        if sdp:
            h.add("Content-Type", SDP)
        request = Request("INVITE", target.replace(headers=()), h, sdp or b"")
        destination = self.next_hop(target)
        c = _Call(handle, True, CallState.CALLING, request, local_sdp=sdp, answer_for=answer_for,
                  peer_host=destination.host)
        self._calls[handle] = c
        key = self._send(request, destination, None, now)
        c.invite_key = key
        self._by_invite_key[key] = handle
        self._pump(now)
        return handle

    def cancel(self, call: int, now: float) -> None:
        """CANCEL our pending INVITE (§9.1): at once if a provisional response has come, else as
        soon as one does. A 2xx racing the CANCEL is ACKed and the call ended with BYE."""
        c = self._call(call)
        if not c.is_uac or c.state not in SETTING_UP:
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
        if c.is_uac or c.state not in UNANSWERED:
            raise UAError(f"call {call} has no INVITE waiting for an answer")
        assert c.invite_key is not None
        tag = c.dialog.local_tag if c.dialog is not None else self._token()
        if status == 100:
            raise UAError("100 Trying is the transaction layer's")
        h = [*headers, *self._response_common()]
        if status < 300:
            h.append(("Contact", str(self.local_contact)))
        if 200 <= status < 300:
            h.append(("Allow", ", ".join(self.allow)))  # what the caller may refresh with (UPDATE)
        if 200 <= status < 300 and c.timer_decision is not None:
            h += c.timer_decision.headers  # RFC 4028 §9
        body = b""
        if sdp is not None and status < 300:
            body = sdp
            h.append(("Content-Type", SDP))
        reliable = status < 200 and self._reliable_1xx(c, sdp)
        if reliable:
            assert c.reliable is not None
            h += c.reliable.next_headers()
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
                self._move(c, CallInput.RING)
            if reliable:
                assert c.reliable is not None
                if sdp is not None:
                    c.local_sdp = sdp  # RFC 3262 §5: an offer or answer in a reliable 1xx counts
                self._send_final_or_1xx(c, c.reliable.send(response, now), now)
            else:
                self.layer.send_response(response, now)
        elif status < 300:
            assert c.dialog is not None
            c.local_sdp = sdp if sdp is not None else c.local_sdp
            self._move(c, CallInput.ANSWER)
            c.ok = response
            c.ok_seq = c.invite.cseq.seq
            if c.timer_decision is not None:
                self._timer_agreed(c, c.timer_decision.agreement, now)
            if c.reliable is not None:
                # §3: the 2xx waits for the PRACK of every reliable 1xx before it
                self._send_final_or_1xx(c, c.reliable.send(response, now), now)
            else:
                self._ok_sent(c, now)
                self.layer.send_response(response, now)
        else:
            if c.reliable is not None:
                c.reliable.send(response, now)
            self.layer.send_response(response, now)
            self._forget(c, now)
        self._pump(now)

    def _reliable_1xx(self, c: _Call, sdp: bytes | None) -> bool:
        """Whether this 1xx goes reliably (RFC 3262 §3), making the call's record on the first."""
        if "PRACK" not in self.allow:
            return False
        wanted, required = uas_wants_reliable(c.invite.headers)
        if not wanted:
            return False
        if not c.invite.body and sdp is None and c.local_sdp is None:
            # RFC 3261 §13.2.1: an INVITE without an offer gets one in the first reliable
            # response; a 1xx without one can go reliably only when the caller demanded it
            if required:
                raise UAError("a reliable 1xx to an INVITE without an offer must carry ours")
            return False
        if c.reliable is None:
            c.reliable = ReliableProvisionals(c.invite.cseq.seq, t1=self.timers.t1,
                                              first_rseq=self._rng.randint(1, 2**31 - 1))
        return True

    def _ok_sent(self, c: _Call, now: float) -> None:
        c.ok_interval = self.timers.t1
        c.ok_next = now + self.timers.t1
        c.ok_give_up = now + 64 * self.timers.t1

    def _send_final_or_1xx(self, c: _Call, responses: list[Response], now: float) -> None:
        pending = next((sr for sr in self._server.values()
                        if sr.call == c.handle and sr.request.method == "PRACK"), None)
        if pending is not None:
            # RFC 3262 §5: a PRACK's offer is being answered; what follows goes after that answer
            pending.held += responses
            return
        for response in responses:
            if 200 <= response.status < 300:
                self._ok_sent(c, now)  # the 2xx's own retransmission starts when it first leaves
            self.layer.send_response(response, now)

    def _on_prack(self, c: _Call, event: tx.RequestReceived, now: float) -> None:
        """A PRACK (RFC 3262 §3): 200 when it names our outstanding reliable 1xx, else 481; an
        answer to the offer of our reliable 1xx rides on it (§5)."""
        request = event.request
        try:
            rack = RAck.parse(request.headers.get("RAck") or "")
        except PrackError:
            self._reply(request, 400, now, reason="Bad RAck")
            return
        matched, release = (c.reliable.prack(rack, now) if c.reliable is not None and not c.is_uac
                            else (False, []))
        if not matched:
            self._reply(request, 481, now)
            return
        if c.dialog is not None:
            c.dialog.accept_remote_cseq(request)  # §12.2.2: it names our reliable 1xx: accepted
        if request.body and request.content_type != SDP:
            status = 415
        elif request.body and c.remote_sdp is None and c.local_sdp is not None:
            c.remote_sdp = request.body  # the answer to the offer in our reliable 1xx
            status = 200
        elif request.body and c.remote_sdp is not None and c.local_sdp is not None:
            # §5: a new offer, the first exchange being done: the application answers it in the
            # PRACK's 2xx (`respond`), and what the PRACK released follows that answer
            rid = self._new_handle()
            self._server[rid] = _ServerRequest(request, event.transaction_key, c.handle, None,
                                               held=release)
            self._events.append(RequestReceived(c.handle, rid, request))
            return
        elif request.body:
            # an offer while the INVITE's is unanswered (RFC 3264 §4 allows one at a time); the
            # 1xx counts as acknowledged all the same
            status = 491
        else:
            status = 200
        self.layer.send_response(make_response(request, status, headers=self._response_common()), now)
        self._send_final_or_1xx(c, release, now)

    def _early_update_ok(self, c: _Call, request: Request, now: float) -> bool:
        """An UPDATE before the dialog is confirmed (RFC 3311 §5.2): its offer is taken only once
        the INVITE's offer has been answered reliably (a reliable 1xx or a PRACK, RFC 3262 §5);
        491 while an offer of ours waits for its answer, 500 with Retry-After while theirs waits
        for ours. Without an offer it is a target refresh like any other."""
        if not request.body:
            return True
        if c.local_sdp is not None and c.remote_sdp is None:
            self._reply(request, 491, now)
            return False
        if c.local_sdp is None:
            self._reply(request, 500, now, reason="Offer Pending",
                        headers=[("Retry-After", str(self._rng.randint(0, 10)))])
            return False
        return True

    def _prack_provisional(self, c: _Call, response: Response, rseq: int, now: float) -> bool:
        """A reliable 1xx to our INVITE (RFC 3262 §4): PRACK it and say True when it is new and in
        order; False for a retransmission or one out of order, which is not processed further."""
        tag = response.to.tag or ""
        receiver = c.rseqs.setdefault(tag, ReliableReceiver())
        if receiver.receive(rseq) is Verdict.DROP:
            return False
        if c.dialog is not None and c.dialog.remote_tag == tag:
            dialog = c.dialog
        else:
            # another fork's early dialog (RFC 3261 §12.1.2): its PRACKs go in a dialog of its
            # own, kept so that each one's CSeq is one higher than the last
            dialog = c.forks.get(tag) or Dialog.from_uac(c.invite, response, self.local_contact)
            c.forks[tag] = dialog
        body = b""
        if response.body:
            if c.invite.body and tag not in c.early_answers:
                c.early_answers[tag] = response.body  # §5: this fork's answer to our offer
                if dialog is c.dialog:
                    c.remote_sdp = response.body
            elif c.local_sdp is None and c.answer_for is not None:
                # §5: the offer of a late-offer INVITE comes in the first reliable 1xx, the
                # answer in the PRACK
                c.remote_sdp = response.body
                body = c.answer_for(response.body)
                c.local_sdp = body
        headers = [*self._request_common(), ("RAck", str(RAck(rseq, c.invite.cseq.seq, "INVITE")))]
        prack = dialog.create_request("PRACK", headers=headers, body=body,
                                      content_type=SDP if body else None)
        key = self._send(prack, dialog.destination(), dialog, now)
        self._client[key] = _ClientOp(self._new_handle(), c.handle, "PRACK")
        return True

    # Within a call --------------------------------------------------------------------------------

    def reinvite(self, call: int, sdp: bytes | None, now: float, *,
                 answer_for: Callable[[bytes], bytes] | None = None) -> int:
        """Send a re-INVITE (a new offer, or none to ask for theirs: `answer_for` then makes the
        answer for the ACK, and without it the ACK waits for `ack`). A 491 is retried after the
        §14.1 back-off. Returns the op number that `ReinviteCompleted` carries."""
        c = self._call(call)
        if c.state is not CallState.CONFIRMED or c.dialog is None:
            raise UAError(f"call {call} is not established")
        if c.reinvite is not None:
            raise UAError(f"call {call} has a re-INVITE pending already (§14.1)")
        if c.ack_pending is not None:
            raise UAError(f"call {call} still owes an ACK with an answer")
        op = self._new_handle()
        c.reinvite = _Reinvite(op, c.invite, None, sdp)
        c.reinvite_answer_for = answer_for
        self._send_reinvite(c, now)
        self._pump(now)
        return op

    def adopt(self, dialog: Dialog, *, local_sdp: bytes | None = None,
              remote_sdp: bytes | None = None, peer_host: str = "") -> int:
        """Take over a confirmed INVITE dialog this UA held before a restart (from its state file):
        it becomes a call like any other (BYE, re-INVITE, requests from the peer). `peer_host` is
        where its forming request came from or went to, as `peer_host` said before the restart.
        Returns its handle."""
        if dialog.id in self._by_dialog:
            raise UAError(f"dialog {dialog.call_id} is held already")
        dialog.state = DialogState.CONFIRMED
        handle = self._new_handle()
        # What the INVITE was matters no more: a request of the dialog's shape stands in for it.
        invite = dialog.create_request("INVITE", cseq=max(dialog.local_seq, 1))
        self._calls[handle] = _Call(handle, dialog.is_uac, CallState.CONFIRMED, invite, dialog=dialog,
                                    local_sdp=local_sdp, remote_sdp=remote_sdp, peer_host=peer_host)
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
            if sr.timer is not None:
                h += sr.timer.headers
                self._timer_agreed(c, sr.timer.agreement, now)
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
        self._accept_in_dialog(sr, status)
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
        if c.state in SETTING_UP and c.is_uac:
            self.cancel(call, now)
            return 0
        if c.state in UNANSWERED and not c.is_uac:
            self.answer_invite(call, 603, now)
            return 0
        op = self._send_bye(c, now)
        self._end(c, "local", now)
        self._pump(now)
        return op


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
            if old is None or old.state is CallState.TERMINATED:
                self._reply(request, 481, now)
                return
            if replaces.early_only and old.state is CallState.CONFIRMED:
                self._reply(request, 486, now)
                return
            replaced = old.dialog
        if self._refused(event, replaced, now):
            return
        go_on, timer_decision = self._timer_decide(request, now)
        if not go_on:
            return
        referred_by_s = request.headers.get("Referred-By")
        referred_by = NameAddr.parse(referred_by_s.strip()) if referred_by_s else None
        handle = self._new_handle()
        c = _Call(handle, False, CallState.INCOMING, request, invite_key=event.transaction_key,
                  remote_sdp=request.body or None, replaces_call=replaces_call,
                  timer_decision=timer_decision, peer_allow=_allow_of(request),
                  peer_host=event.source.host)
        self._calls[handle] = c
        self._by_invite_key[event.transaction_key] = handle
        self._events.append(IncomingInvite(handle, request, request.body or None, replaces,
                                           replaces_call, referred_by, event.source))

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
        if c is not None and c.state in UNANSWERED:
            # §9.2: the INVITE gets 487 and the call never was
            tag = c.dialog.local_tag if c.dialog is not None else self._token()
            self.layer.send_response(make_response(c.invite, 487, to_tag=tag), now)
            self._forget(c, now)
            self._events.append(CallFailed(handle, 487, "Request Terminated"))


    def _on_reinvite(self, c: _Call, event: tx.RequestReceived, now: float) -> None:
        request = event.request
        if request.body and request.content_type != SDP:
            self._reply(request, 415, now, headers=[("Accept", SDP)])
            return
        if c.state is not CallState.CONFIRMED:
            self._reply(request, 491, now)
            return
        if c.reinvite is not None and c.reinvite.key is not None:
            self._reply(request, 491, now)  # §14.2: glare with our own pending re-INVITE
            return
        if c.incoming_reinvite is not None or c.ok is not None:
            # §14.2: an INVITE in progress on the other side: 500 with Retry-After 0-10 s
            self._reply(request, 500, now, headers=[("Retry-After", str(self._rng.randint(0, 10)))])
            return
        go_on, timer_decision = self._timer_decide(request, now)
        if not go_on:
            return
        rid = self._new_handle()
        self._server[rid] = _ServerRequest(request, event.transaction_key, c.handle, None, timer_decision)
        c.incoming_reinvite = rid
        self._by_invite_key[event.transaction_key] = c.handle  # a CANCEL may follow (§9.2)
        self._events.append(ReinviteReceived(c.handle, rid, request, request.body or None))


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
        if c.state is CallState.ANSWERED:
            self._move(c, CallInput.ACK)
            assert c.dialog is not None
            c.dialog.confirm()
            self._events.append(CallEstablished(c.handle, c.remote_sdp))
            if c.replaces_call is not None:
                old = self._calls.get(c.replaces_call)
                if old is not None and old.dialog is not None and old.state is CallState.CONFIRMED:
                    self._send_bye(old, now)
                    self._end(old, "replaced", now)


    def _on_invite_response(self, response: Response, key: TransactionKey | None, now: float) -> None:
        handle = self._by_invite_key.get(key) if key is not None else None
        c = self._calls.get(handle) if handle is not None else None
        if c is None:
            self._ack_stray_2xx(response)
            return
        if c.reinvite is not None and key is not None and c.reinvite.key == key:
            self._on_reinvite_response(c, response, now)
            return
        if response.cseq.seq != c.invite.cseq.seq:
            # a 2xx retransmission for an earlier re-INVITE: ACK again
            if 200 <= response.status < 300:
                self._resend_ack(c, response.cseq.seq)
            return
        status = response.status
        if status < 200:
            if c.state not in SETTING_UP:
                return
            rseq = rseq_of(response) if "PRACK" in self.allow else None
            if rseq is not None and not response.to.tag:
                return  # §4 wants a dialog to send the PRACK in: unusable
            if response.to.tag and c.dialog is None and response.contact:
                c.dialog = Dialog.from_uac(c.invite, response, self.local_contact)
                self._by_dialog[c.dialog.id] = c.handle
                self._move(c, CallInput.PROVISIONAL)
            if rseq is not None and not self._prack_provisional(c, response, rseq, now):
                return
            if c.cancel_wanted and not c.cancelled:
                self._send_cancel(c, now)
            if status > 100:
                self._events.append(CallProgress(c.handle, response))
            return
        if status >= 300:
            if c.state in SETTING_UP and key is not None and not c.cancel_wanted:
                retry = self._timer_retry_422(c, key, response, now)
                if retry is None:
                    retry = self._auth_retry(key, response, now)
                if retry is not None:
                    c.invite = self._sent[retry].request
                    c.invite_key = retry
                    self._by_invite_key[retry] = c.handle
                    c.forks.clear()  # early dialogs end with the final response (§12.3), all of them
                    c.early_answers.clear()
                    if c.dialog is not None:  # an early dialog ends with the final response
                        self._by_dialog.pop(c.dialog.id, None)
                        c.dialog = None
                        self._move(c, CallInput.CHALLENGED)
                    return
            if c.state in SETTING_UP:
                self._forget(c, now)
                self._events.append(CallFailed(c.handle, status, response.reason))
            return
        # 2xx
        if c.state in (CallState.CONFIRMED, CallState.TERMINATED) or (
                c.dialog is not None and c.dialog.state is DialogState.CONFIRMED):
            if c.dialog is not None and response.to.tag == c.dialog.remote_tag:
                self._resend_ack(c, response.cseq.seq)
            else:
                self._ack_and_bye(c.invite, response, now)  # a forked 2xx we do not want
            return
        # RFC 3262 §5: an exchange completed in this early dialog (a reliable 1xx, PRACK, UPDATE)
        # stands; an SDP the 2xx repeats is not a new answer
        early_answer = c.early_answers.get(response.to.tag or "")
        main_fork = c.dialog is not None and c.dialog.remote_tag == response.to.tag
        if c.dialog is None or c.dialog.remote_tag != response.to.tag:
            if c.dialog is not None:
                self._by_dialog.pop(c.dialog.id, None)
            # a fork whose reliable 1xx we PRACKed goes on in its early dialog (its CSeq counts on)
            c.dialog = c.forks.pop(response.to.tag or "", None)
            if c.dialog is None:
                c.dialog = Dialog.from_uac(c.invite, response, self.local_contact)
            else:
                c.dialog.update_from_response(response)
            self._by_dialog[c.dialog.id] = c.handle
        else:
            c.dialog.update_from_response(response)
        c.dialog.confirm()
        body = b""
        hold_ack = False
        if not main_fork and c.invite.body:
            c.local_sdp = c.invite.body  # what another fork's early UPDATE changed is not this one's
        if early_answer is not None:
            if not main_fork:  # the main fork's is in remote_sdp already, with its UPDATEs
                c.remote_sdp = early_answer
        elif response.body:
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
        self._move(c, CallInput.ACCEPTED)
        self._timer_response(c, response, now)
        self._events.append(CallEstablished(c.handle, c.remote_sdp))

    def _on_reinvite_response(self, c: _Call, response: Response, now: float) -> None:
        assert c.reinvite is not None and c.dialog is not None
        pending = c.reinvite
        op, request, _key, sdp, retries = (pending.op, pending.request, pending.key, pending.sdp,
                                           pending.retries)
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
            self._timer_response(c, response, now)
            self._events.append(ReinviteCompleted(c.handle, op, response))
            return
        if status in (401, 407) and _key is not None:
            retry = self._auth_retry(_key, response, now)
            if retry is not None:
                pending.request, pending.key = self._sent[retry].request, retry
                self._by_invite_key[retry] = c.handle
                return
        if status == 491 and retries < _GLARE_RETRIES:
            # §14.1: the Call-ID owner waits 2.1-4 s, the other side 0-2 s, in 10 ms units
            low, high = (210, 400) if c.dialog.is_uac else (0, 200)
            pending.key = None
            pending.retries += 1
            c.reinvite_retry_at = now + self._rng.randint(low, high) / 100
            return
        c.reinvite = None
        self._timer_failed(c, now)
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


    # Sending helpers ----------------------------------------------------------------------------

    def _send_reinvite(self, c: _Call, now: float) -> None:
        assert c.reinvite is not None and c.dialog is not None
        pending = c.reinvite
        sdp = pending.sdp
        request = c.dialog.create_request("INVITE", headers=[*self._request_common(),
                                                             *self._timer_request_headers(c)],
                                          body=sdp or b"", content_type=SDP)
        key = self._send(request, c.dialog.destination(), c.dialog, now)
        pending.request, pending.key = request, key
        self._by_invite_key[key] = c.handle

    def _send_cancel(self, c: _Call, now: float) -> None:
        if c.invite_key is None or c.cancelled:
            return
        c.cancelled = True
        key = self.layer.cancel(c.invite_key, now)
        self._client[key] = _ClientOp(self._new_handle(), None, "CANCEL")

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
        self._client[key] = _ClientOp(op, None, "BYE")
        c.dialog.terminate()
        return op


    def _invite_deadlines(self) -> list[float]:
        deadlines: list[float] = []
        for c in self._calls.values():
            if c.ok_next is not None:
                deadlines.append(c.ok_next)
            if c.reliable is not None and c.reliable.deadline is not None:
                deadlines.append(c.reliable.deadline)
            if c.reinvite_retry_at is not None:
                deadlines.append(c.reinvite_retry_at)
        return deadlines

    def _invite_timers(self, now: float) -> None:
        for c in list(self._calls.values()):
            if c.reliable is not None and c.reliable.deadline is not None and c.reliable.deadline <= now:
                again, reject = c.reliable.expire(now)
                for response in again:
                    self.layer.send_response(response, now)
                if reject:
                    # RFC 3262 §3: no PRACK within 64*T1: the INVITE is rejected with a 5xx
                    tag = c.dialog.local_tag if c.dialog is not None else self._token()
                    self.layer.send_response(make_response(c.invite, 504, "No PRACK", to_tag=tag,
                                                           headers=self._response_common()), now)
                    self._forget(c, now)
                    self._events.append(CallFailed(c.handle, 504, "No PRACK"))
                    continue
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


def _allow_of(message: Request | Response) -> frozenset[str]:
    return frozenset(m.strip().upper() for v in message.headers.get_all("Allow") for m in v.split(",")
                     if m.strip())
