"""A call bound to a local address of its own (`TransactionLayer.bind_call`): a multihomed host puts
each session on an egress, and every message of that call leaves from the egress's address."""

from __future__ import annotations

from tests.unit.sip.test_ua import ANSWER, OFFER, T1, core, one, uri

from sipmob.sip.message import Request, Response, parse_message
from sipmob.sip.transaction import TransactionLayer
from sipmob.sip.transport import Address
from sipmob.sip.ua import (
    CallEstablished,
    CallTerminated,
    IncomingInvite,
    ReinviteCompleted,
    ReinviteReceived,
    RequestCompleted,
    UACore,
)

A = Address("10.0.1.2", 5060, "udp")  # the default address (SIP's, the registration's)
WAN1 = Address("10.0.1.2", 5060, "udp")
WAN2 = Address("10.0.2.2", 5062, "udp")
WAN3 = Address("10.0.3.2", 5064, "udp")
B = Address("192.0.2.1", 5080, "udp")


class Wire:
    """Two cores; each datagram leaves from the local address the layer names (or the default)."""

    def __init__(self, a: UACore, b: UACore) -> None:
        self.a, self.b = a, b
        self.home = {WAN1, WAN2, WAN3}  # every address of `a`
        self.now = 0.0
        self.sent: list[tuple[Address, Address, bytes]] = []  # (from, to, data)
        self.events: dict[int, list[object]] = {id(a): [], id(b): []}

    def run(self, drop: object = None) -> None:
        for _ in range(50):
            moved = 0
            for ua, default in ((self.a, A), (self.b, B)):
                for data, dest, local in ua.messages_to_send_from():
                    src = local or default
                    self.sent.append((src, dest, data))
                    if drop is not None and drop(data):  # type: ignore[operator]
                        continue
                    peer = self.b if dest == B else self.a if dest in self.home else None
                    if peer is not None:
                        peer.receive(data, src, self.now)
                        moved += 1
            for ua in (self.a, self.b):
                while (event := ua.next_event()) is not None:
                    self.events[id(ua)].append(event)
            if not moved:
                return

    def take(self, ua: UACore, kind: type) -> list[object]:
        out = [e for e in self.events[id(ua)] if isinstance(e, kind)]
        self.events[id(ua)] = [e for e in self.events[id(ua)] if not isinstance(e, kind)]
        return out

    def from_a(self, start: bytes, after: int = 0) -> list[tuple[Address, Request | Response]]:
        return [(src, parse_message(data)) for src, _dest, data in self.sent[after:]
                if src in self.home and data.startswith(start)]


def pair() -> tuple[Wire, UACore, UACore]:
    a, b = core(A, "alice"), core(B, "bob", seed=2)
    return Wire(a, b), a, b


def via_contact(message: Request | Response) -> tuple[tuple[str, int | None], tuple[str, int | None]]:
    contact = message.contact[0].uri
    return (message.vias[0].host, message.vias[0].port), (contact.host, contact.port)


def outgoing_call(w: Wire, a: UACore, b: UACore, local: Address) -> tuple[int, int]:
    call = a.invite(uri(B, "b"), OFFER, w.now)
    a.layer.bind_call(a.call_id(call), local)  # before anything left: the INVITE is stamped anew
    w.run()
    inc = one(w.take(b, IncomingInvite))
    assert isinstance(inc, IncomingInvite)
    b.answer_invite(inc.call, 200, w.now, sdp=ANSWER)
    w.run()
    assert w.take(a, CallEstablished)
    return call, inc.call


def test_a_bound_call_leaves_from_its_address_with_via_and_contact_naming_it() -> None:
    w, a, b = pair()
    ca, cb = outgoing_call(w, a, b, WAN2)
    [(src, invite)] = w.from_a(b"INVITE ")
    assert src == WAN2 and via_contact(invite) == (("10.0.2.2", 5062), ("10.0.2.2", 5062))
    [(src, _ack)] = w.from_a(b"ACK ")
    assert src == WAN2
    # the peer's requests come to the bound Contact, and our answers leave from there
    mark = len(w.sent)
    b.bye(cb, w.now)
    w.run()
    assert [dest for _src, dest, data in w.sent[mark:] if data.startswith(b"BYE ")] == [WAN2]
    [(src, ok)] = w.from_a(b"SIP/2.0 200", mark)
    assert src == WAN2
    assert w.take(a, CallTerminated) and ca


def test_moving_one_call_leaves_the_other_where_it_is() -> None:
    w, a, b = pair()
    c1, b1 = outgoing_call(w, a, b, WAN1)
    c2, b2 = outgoing_call(w, a, b, WAN2)
    mark = len(w.sent)
    a.layer.bind_call(a.call_id(c2), WAN3)  # WAN2 failed: only this call moves
    a.reinvite(c2, OFFER.replace(b"4000", b"4002"), w.now)
    w.run()
    rx = one(w.take(b, ReinviteReceived))
    assert via_contact(rx.request) == (("10.0.3.2", 5064), ("10.0.3.2", 5064))  # type: ignore[attr-defined]
    b.answer_reinvite(b2, rx.rid, 200, w.now, sdp=ANSWER)  # type: ignore[attr-defined]
    w.run()
    assert one(w.take(a, ReinviteCompleted)).response.status == 200  # type: ignore[attr-defined]
    assert {src for src, _ in w.from_a(b"", mark)} == {WAN3}
    # the peer now sends the moved call's requests to WAN3, the other call's still to WAN1
    mark = len(w.sent)
    b.bye(b2, w.now)
    b.bye(b1, w.now)
    w.run()
    byes = sorted((parse_message(data).call_id, dest) for _s, dest, data in w.sent[mark:]
                  if data.startswith(b"BYE "))
    assert sorted(dest for _cid, dest in byes) == [WAN1, WAN3]
    assert {src for src, _ in w.from_a(b"SIP/2.0 200", mark)} == {WAN1, WAN3}
    assert len(w.take(a, CallTerminated)) == 2 and c1


def test_an_incoming_call_bound_before_the_answer_answers_from_its_address() -> None:
    w, a, b = pair()
    cb = b.invite(uri(A, "a"), OFFER, w.now)
    w.run()
    inc = one(w.take(a, IncomingInvite))
    assert isinstance(inc, IncomingInvite)
    a.layer.bind_call(inc.request.call_id, WAN2)
    a.answer_invite(inc.call, 200, w.now, sdp=ANSWER)
    w.run()
    [(src, ok)] = [(s, m) for s, m in w.from_a(b"SIP/2.0 200")]
    assert src == WAN2 and via_contact(ok)[1] == ("10.0.2.2", 5062)
    assert w.take(b, CallEstablished)
    # the peer's next request goes to the bound Contact
    mark = len(w.sent)
    b.bye(cb, w.now)
    w.run()
    assert [dest for _s, dest, data in w.sent[mark:] if data.startswith(b"BYE ")] == [WAN2]


def test_a_transaction_keeps_its_address_for_retransmissions_after_a_rebind() -> None:
    w, a, b = pair()
    ca, _ = outgoing_call(w, a, b, WAN2)
    a.reinvite(ca, OFFER.replace(b"4000", b"4004"), w.now)
    w.run(drop=lambda data: data.startswith(b"INVITE "))  # lost: it will be resent
    a.layer.bind_call(a.call_id(ca), WAN3)
    mark = len(w.sent)
    due = a.get_timer()
    assert due is not None and due <= w.now + T1
    w.now = due
    a.handle_timer(w.now)
    w.run(drop=lambda data: True)
    resent = w.from_a(b"INVITE ", mark)
    assert resent and all(src == WAN2 and via_contact(m)[0] == ("10.0.2.2", 5062) for src, m in resent)


def test_an_unbound_layer_says_nothing_of_local_addresses() -> None:
    layer = TransactionLayer([A])
    w, a, b = pair()
    a.invite(uri(B, "b"), OFFER, w.now)
    out = a.messages_to_send_from()
    assert len(out) == 1 and out[0][2] is None
    assert layer.bound("x") is None
    a.layer.bind_call("x", WAN2)
    a.layer.bind_call("x", None)
    assert a.layer.bound("x") is None


def test_responses_to_a_bound_address_are_ours_and_others_are_not() -> None:
    w, a, b = pair()
    ca, _ = outgoing_call(w, a, b, WAN3)
    assert not [e for e in w.events[id(a)] if type(e).__name__ == "MessageDiscarded"]
    stray = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bKx\r\n"
             b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: nope\r\nCSeq: 1 OPTIONS\r\n"
             b"Content-Length: 0\r\n\r\n")
    a.layer.receive(stray, B, w.now)
    assert type(a.layer.next_event()).__name__ == "MessageDiscarded"
    assert ca


def test_an_address_is_in_use_while_a_call_is_bound_or_a_transaction_may_resend_from_it() -> None:
    w, a, b = pair()
    ca, cb = outgoing_call(w, a, b, WAN2)
    assert a.layer.sends_from(WAN2.host) and not a.layer.sends_from(WAN3.host)
    # the call moves; its re-INVITE leaves from WAN3 while an earlier request is still unanswered on WAN2
    a.reinvite(ca, OFFER.replace(b"4000", b"4006"), w.now)
    w.run(drop=lambda data: data.startswith(b"INVITE "))
    a.layer.bind_call(a.call_id(ca), WAN3)
    assert a.layer.sends_from(WAN2.host), "the lost re-INVITE is still resent from WAN2"
    w.now = a.get_timer() or w.now
    a.handle_timer(w.now)
    w.run()  # resent from WAN2 and answered: the transaction only absorbs late 2xx copies now
    rx = one(w.take(b, ReinviteReceived))
    assert a.layer.sends_from(WAN2.host), "not answered yet"
    b.answer_reinvite(cb, rx.rid, 200, w.now, sdp=ANSWER)  # type: ignore[attr-defined]
    w.run()
    assert not a.layer.sends_from(WAN2.host) and a.layer.sends_from(WAN3.host)
    a.layer.forget_local(WAN2)
    stray = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.2.2:5062;branch=z9hG4bKgone\r\n"
             b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: nope\r\nCSeq: 1 OPTIONS\r\n"
             b"Content-Length: 0\r\n\r\n")
    while a.layer.next_event() is not None:
        pass
    a.layer.receive(stray, B, w.now)
    assert type(a.layer.next_event()).__name__ == "MessageDiscarded"  # WAN2 is ours no more
    assert cb


def test_a_server_transaction_answering_from_an_address_keeps_it_in_use() -> None:
    w, a, b = pair()
    cb = b.invite(uri(A, "a"), OFFER, w.now)
    w.run()
    inc = one(w.take(a, IncomingInvite))
    assert isinstance(inc, IncomingInvite)
    a.layer.bind_call(inc.request.call_id, WAN2)
    a.answer_invite(inc.call, 486, w.now)  # a final answer the peer may ask for again
    a.layer.bind_call(inc.request.call_id, None)
    assert a.layer.sends_from(WAN2.host)
    w.run()  # the peer's ACK: the server transaction is Confirmed
    assert not a.layer.sends_from(WAN2.host)
    assert cb


def test_an_out_of_dialog_request_from_a_local_address_leaves_from_it_and_unbinds_when_answered() -> None:
    # the MDSM's OPTIONS to a CN outside: on the call's egress, as the INVITE that follows
    w, a, _b = pair()
    op = a.request("OPTIONS", uri(B, "b"), w.now, local=WAN2)
    w.run()
    [(src, options)] = w.from_a(b"OPTIONS")
    assert src == WAN2 and (options.vias[0].host, options.vias[0].port) == ("10.0.2.2", 5062)
    [done] = w.take(a, RequestCompleted)
    assert done.op == op and done.response is not None and done.response.status == 200  # type: ignore[attr-defined]
    assert a.layer.bound(options.call_id) is None  # nothing kept per request
    a.request("OPTIONS", uri(B, "b"), w.now)  # without: the default address
    w.run()
    assert [src for src, _m in w.from_a(b"OPTIONS")] == [WAN2, A]


def test_a_request_from_a_local_address_that_times_out_unbinds_too() -> None:
    w, a, _b = pair()
    a.request("OPTIONS", uri(B, "b"), w.now, local=WAN3)
    w.run(drop=lambda data: True)
    [(src, options)] = w.from_a(b"OPTIONS")
    assert src == WAN3
    for _ in range(20):  # past timer F (64*T1)
        w.now += 4 * T1 * 8
        a.handle_timer(w.now)
        w.run(drop=lambda data: True)
    assert w.take(a, RequestCompleted)
    assert a.layer.bound(options.call_id) is None
