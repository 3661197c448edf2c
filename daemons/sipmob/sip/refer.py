"""Requests within a dialog other than INVITE and BYE: REFER (RFC 3515) with its implicit subscription
and ``message/sipfrag`` NOTIFYs, subscriptions (RFC 6665), and answering what the application is
given; and `referred_request`, what a REFER asks its referee to send (RFC 3891, RFC 3892).

Not here: INVITE sessions (`sipmob.sip.invite`), deciding whether to act on a REFER (the application).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from sipmob.sip import transaction as tx
from sipmob.sip.callstate import CallState
from sipmob.sip.dialog import Dialog, DialogState
from sipmob.sip.headers import Replaces
from sipmob.sip.message import Request, make_response, reason_phrase
from sipmob.sip.session_refresh import SessionRefreshes
from sipmob.sip.uabase import REFER_EXPIRES, SDP, SIPFRAG, _Call, _ClientOp, _ServerRequest
from sipmob.sip.uaevents import ReferNotified, RequestReceived, UAError
from sipmob.sip.uri import URI, NameAddr, SIPParseError


class Referrals(SessionRefreshes):
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
        self._client[key] = _ClientOp(op, call, method)
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

    def refer_outside(self, target: URI, refer_to: NameAddr, now: float, *,
                      referred_by: NameAddr | None = None,
                      headers: Sequence[tuple[str, str]] = ()) -> int:
        """Send a REFER outside any dialog (RFC 3515 §2.4: it creates one, with its implicit
        subscription). Returns its handle, which is also the op of its `RequestCompleted` (202)
        and of every `ReferNotified`; the dialog ends with the final NOTIFY. `headers` may add
        Target-Dialog (RFC 4538), so the referee can tell which of its dialogs it is about."""
        handle = self._new_handle()
        h = self._out_of_dialog_headers("REFER", target)
        h.add("Contact", str(self.local_contact))
        h.add("Refer-To", str(refer_to))
        if referred_by is not None:
            h.add("Referred-By", str(referred_by))
        self._common_headers(h)
        for name, value in headers:
            h.add(name, value)
        request = Request("REFER", target.replace(headers=()), h)
        destination = self.next_hop(target)
        c = _Call(handle, True, CallState.SUBSCRIBING, request, kind="subscription",
                  peer_host=destination.host)
        c.refers[request.cseq.seq] = handle
        self._calls[handle] = c
        key = self._send(request, destination, None, now)
        self._client[key] = _ClientOp(handle, handle, "REFER")
        self._pump(now)
        return handle

    def accept_refer_outside(self, rid: int, now: float) -> int:
        """Accept a REFER received outside a dialog: 202 makes the dialog of its subscription
        (RFC 3515 §2.4), then the first NOTIFY ("100 Trying"). Returns the dialog's handle; the
        subscription's ``id`` for `notify_refer` is the REFER's CSeq number."""
        sr = self._server.get(rid)
        if sr is None or sr.request.method != "REFER" or sr.call is not None:
            raise UAError(f"no out-of-dialog REFER {rid} waiting")
        del self._server[rid]
        request = sr.request
        tag = sr.to_tag or self._token()
        h = [("Contact", str(self.local_contact)), *self._response_common()]
        self.layer.send_response(make_response(request, 202, to_tag=tag, headers=h), now)
        handle = self._new_handle()
        dialog = Dialog.from_uas(request, tag, self.local_contact, confirmed=True)
        c = _Call(handle, False, CallState.CONFIRMED, request, dialog=dialog, kind="subscription",
                  peer_host=sr.source)
        self._calls[handle] = c
        self._by_dialog[dialog.id] = handle
        seq = request.cseq.seq
        c.refer_subs[seq] = seq
        self.notify_refer(handle, seq, 100, now)
        return handle

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
        timed = self._calls.get(sr.call) if sr.call is not None and sr.timer is not None else None
        if timed is not None and sr.timer is not None and 200 <= status < 300:
            h += sr.timer.headers  # an UPDATE (RFC 4028 §9)
            self._timer_agreed(timed, sr.timer.agreement, now)
        updated = self._calls.get(sr.call) if sr.call is not None else None
        if (updated is not None and request.method in ("UPDATE", "PRACK") and request.body and body
                and 200 <= status < 300):
            # RFC 3311, RFC 3262 §5: the session changed as a re-INVITE would change it; a refresh
            # re-INVITE of ours (or the 2xx of an INVITE still ringing) carries this description
            updated.local_sdp, updated.remote_sdp = body, request.body
        tag = (sr.to_tag or self._token()) if request.to.tag is None else None
        if request.method == "SUBSCRIBE" and tag is not None and 200 <= status < 300:
            h.append(("Contact", str(self.local_contact)))
        response = make_response(request, status, reason, to_tag=tag, headers=h, body=body)
        if not self._fits(response):
            status = 513
            response = make_response(request, 513, to_tag=tag, headers=self._response_common())
        self.layer.send_response(response, now)
        self._accept_in_dialog(sr, status)
        if sr.held and updated is not None:
            # RFC 3262 §5: what waited for the PRACK's answer (`sr` is no longer in _server)
            self._send_final_or_1xx(updated, sr.held, now)
        created: int | None = None
        ok = 200 <= status < 300
        if request.method == "SUBSCRIBE" and tag is not None and ok:
            created = self._new_handle()
            dialog = Dialog.from_uas(request, tag, self.local_contact, confirmed=True)
            self._calls[created] = _Call(created, False, CallState.CONFIRMED, request, dialog=dialog,
                                         kind="subscription", peer_host=sr.source)
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
        h = self._out_of_dialog_headers("SUBSCRIBE", target)
        h.add("Contact", str(self.local_contact))
        h.add("Event", event)
        h.add("Expires", str(expires))
        self._common_headers(h)
        for name, value in headers:
            h.add(name, value)
        request = Request("SUBSCRIBE", target.replace(headers=()), h)
        destination = self.next_hop(target)
        self._calls[handle] = _Call(handle, True, CallState.SUBSCRIBING, request, kind="subscription",
                                    peer_host=destination.host)
        key = self._send(request, destination, None, now)
        self._client[key] = _ClientOp(handle, handle, "SUBSCRIBE")
        self._pump(now)
        return handle


    def _check_refer(self, request: Request, now: float) -> bool:
        """RFC 3515 §2.4.1: exactly one well-formed Refer-To, else 400 (a malformed one: from the
        pump); outside a dialog also one Contact (§2.4, REFER creates a dialog)."""
        targets = request.headers.get_lines("Refer-To")
        if len(targets) != 1:
            self._reply(request, 400, now, reason="Exactly one Refer-To")
            return False
        NameAddr.parse(targets[0].strip())
        if request.to.tag is None and len(request.contact) != 1:
            self._reply(request, 400, now, reason="Exactly one Contact")
            return False
        return True

    def _on_refer(self, c: _Call, event: tx.RequestReceived, now: float) -> None:
        request = event.request
        if not self._check_refer(request, now):
            return
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
        if c.dialog is not None:
            c.dialog.accept_remote_cseq(request)  # §12.2.2: accepted (a 4xx above changed nothing)
        self._reply(request, 200, now)
        if terminated:
            assert ident is not None
            del c.refers[ident]
        self._events.append(ReferNotified(c.handle, op, status, reason, terminated))
        if terminated and c.kind == "subscription" and not c.refers:
            self._end(c, "terminated", now)  # the REFER's own dialog ends with its subscription



@dataclasses.dataclass(frozen=True, slots=True)
class Referred:
    """What a REFER asks its referee to do (RFC 3515 §2.4.2): send `method` (INVITE unless the
    Refer-To URI says ``method=``, as a nested REFER does) to `target` with `headers`: those
    embedded in the Refer-To URI that the triggered request carries (Replaces, RFC 3891 §3; for a
    nested REFER its own Refer-To), and the REFER's Referred-By (RFC 3892 §3)."""

    method: str
    target: URI
    headers: tuple[tuple[str, str], ...]
    referred_by: NameAddr | None
    replaces: Replaces | None


_CARRIED = ("replaces", "refer-to", "referred-by", "target-dialog")


def referred(refer: Request) -> Referred:
    """Raises `SIPParseError` for a REFER without one well-formed Refer-To, or for a method the
    referee would not send for a REFER (only INVITE and REFER are)."""
    values = refer.headers.get_lines("Refer-To")
    if len(values) != 1:
        raise SIPParseError("Exactly one Refer-To")
    uri = NameAddr.parse(values[0].strip()).uri
    method = (uri.param("method") or "INVITE").upper()
    if method not in ("INVITE", "REFER"):
        raise SIPParseError(f"Refer-To asks for {method}")
    headers: list[tuple[str, str]] = []
    replaces: Replaces | None = None
    for name, value in uri.headers:
        if name.lower() not in _CARRIED:
            continue  # anything else is not ours to put into a request (RFC 3261 §19.1.5)
        if name.lower() == "replaces":
            replaces = Replaces.parse(value)
            value = str(replaces)
        headers.append((name, value))
    by_value = refer.headers.get("Referred-By")
    by = NameAddr.parse(by_value.strip()) if by_value else None
    if by is not None and not any(n.lower() == "referred-by" for n, _ in headers):
        headers.append(("Referred-By", (by_value or "").strip()))
    params = tuple((n, v) for n, v in uri.params if n.lower() != "method")
    return Referred(method, uri.replace(headers=(), params=params), tuple(headers), by, replaces)


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

