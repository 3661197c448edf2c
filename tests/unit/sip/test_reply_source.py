"""Responses leave from the local address their request arrived on (RFC 3581 §4, RFC 3261 §18.2.2),
whatever address the call is bound to (`TransactionLayer.bind_call`) and whichever is the default:
a peer that sent from a connected socket, or through a strict firewall, drops any other."""

from __future__ import annotations

from tests.unit.sip.test_bind_call import WAN1, WAN2, WAN3, B, Wire, pair, via_contact
from tests.unit.sip.test_ua import ANSWER, OFFER, T1, one, uri

from sipmob.sip.message import Request, make_response, parse_message
from sipmob.sip.transaction import RequestReceived, TimerConfig, TransactionLayer
from sipmob.sip.transport import Address
from sipmob.sip.ua import IncomingInvite, ReinviteCompleted, ReinviteReceived, UACore

DEFAULT = WAN1  # Z: where the layer sends from when nothing else is said
LAN = Address("192.168.50.1", 5070, "udp")  # X: the home side, apart from the egresses
PEER = Address("192.168.50.20", 5060, "udp")


def options(branch: str = "z9hG4bKopt1", call_id: str = "dev1@home") -> bytes:
    return (f"OPTIONS sip:phone@{LAN.host}:{LAN.port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {PEER.host}:{PEER.port};branch={branch};rport\r\n"
            f"From: <sip:probe@{PEER.host}>;tag=1\r\nTo: <sip:phone@{LAN.host}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def layer() -> TransactionLayer:
    return TransactionLayer([DEFAULT], timers=TimerConfig(t1=T1))


def received(lay: TransactionLayer) -> RequestReceived:
    events = []
    while (event := lay.next_event()) is not None:
        events.append(event)
    [rx] = [e for e in events if isinstance(e, RequestReceived)]
    return rx


def test_a_request_arriving_on_an_address_is_answered_from_it_not_from_the_default() -> None:
    lay = layer()
    lay.receive(options(), PEER, 0.0, local=LAN)
    lay.send_response(make_response(received(lay).request, 200), 0.0)
    [(data, dest, local)] = lay.messages_to_send_from()
    assert data.startswith(b"SIP/2.0 200") and dest == PEER and local == LAN
    # the peer did not hear it and sends the request again: the same answer from the same place
    lay.receive(options(), PEER, 0.5, local=LAN)
    [(again, dest, local)] = lay.messages_to_send_from()
    assert again == data and dest == PEER and local == LAN


def test_a_request_arriving_on_an_address_is_answered_from_it_when_its_call_is_bound_elsewhere() -> None:
    lay = layer()
    lay.bind_call("dev1@home", WAN3)  # Y: the call's egress
    lay.receive(options(), PEER, 0.0, local=LAN)
    lay.send_response(make_response(received(lay).request, 200), 0.0)
    [(_data, _dest, local)] = lay.messages_to_send_from()
    assert local == LAN
    # our own requests of that call still leave from its egress
    mine = parse_message(options("z9hG4bKmine"))
    assert isinstance(mine, Request)
    lay.send_request(mine, PEER, 0.0)
    [(_data, _dest, local)] = lay.messages_to_send_from()
    assert local == WAN3


def test_without_the_arrival_address_the_old_rule_holds() -> None:
    lay = layer()
    lay.bind_call("dev1@home", WAN3)
    lay.receive(options(), PEER, 0.0)
    lay.send_response(make_response(received(lay).request, 200), 0.0)
    [(_data, _dest, local)] = lay.messages_to_send_from()
    assert local == WAN3


def test_an_invite_gets_its_100_trying_and_its_retransmitted_final_answer_from_where_it_arrived() -> None:
    lay = layer()
    invite = options().replace(b"OPTIONS", b"INVITE").replace(b"z9hG4bKopt1", b"z9hG4bKinv1")
    lay.receive(invite, PEER, 0.0, local=LAN)
    rx = received(lay)
    due = lay.get_timer()
    assert due is not None
    lay.handle_timer(due)  # no answer within 200 ms: the layer says 100 Trying itself
    [(trying, _dest, local)] = lay.messages_to_send_from()
    assert trying.startswith(b"SIP/2.0 100") and local == LAN
    lay.send_response(make_response(rx.request, 486), due)
    [(busy, _dest, local)] = lay.messages_to_send_from()
    assert busy.startswith(b"SIP/2.0 486") and local == LAN
    assert lay.sends_from(LAN.host), "it may resend the 486 from there until the ACK"
    now = due
    for _ in range(3):  # Timer G: the 486 again, from the same place
        now = lay.get_timer() or now
        lay.handle_timer(now)
        assert {local for _d, _to, local in lay.messages_to_send_from()} <= {LAN}


def test_a_malformed_request_is_refused_from_where_it_arrived() -> None:
    lay = layer()
    bad = options().replace(b"Max-Forwards: 70\r\n", b"")  # a 400 naming the missing header
    lay.receive(bad, PEER, 0.0, local=LAN)
    [(data, dest, local)] = lay.messages_to_send_from()
    assert data.startswith(b"SIP/2.0 400") and dest == PEER and local == LAN


class ArrivalWire(Wire):
    """As `Wire`, and `a` is told which of its addresses each datagram arrived on."""

    def run(self, drop: object = None) -> None:
        for _ in range(50):
            before = len(self.sent)
            for data, dest, local in self.a.messages_to_send_from():
                src = local or DEFAULT
                self.sent.append((src, dest, data))
                if dest == B:
                    self.b.receive(data, src, self.now)
            for data, dest, _local in self.b.messages_to_send_from():
                self.sent.append((B, dest, data))
                if drop is not None and drop(data):  # type: ignore[operator]
                    continue
                if dest in self.home:
                    self.a.receive(data, B, self.now, dest)  # it arrived on `dest`'s socket
            for ua in (self.a, self.b):
                while (event := ua.next_event()) is not None:
                    self.events[id(ua)].append(event)
            if len(self.sent) == before:
                return


def arrival_pair() -> tuple[ArrivalWire, UACore, UACore]:
    w, a, b = pair()
    return ArrivalWire(a, b), a, b


def test_an_incoming_call_bound_elsewhere_is_answered_from_where_its_invite_arrived() -> None:
    w, a, b = arrival_pair()
    cb = b.invite(uri(WAN1, "a"), OFFER, w.now)
    w.run()
    inc = one(w.take(a, IncomingInvite))
    assert isinstance(inc, IncomingInvite)
    a.layer.bind_call(inc.request.call_id, WAN2)  # the call's egress is chosen before the answer
    a.answer_invite(inc.call, 200, w.now, sdp=ANSWER)
    w.run()
    [(src, ok)] = w.from_a(b"SIP/2.0 200")
    assert src == WAN1, "from where the INVITE arrived"
    assert via_contact(ok)[1] == (WAN2.host, WAN2.port), "the dialog goes on at the call's egress"
    # the peer's re-INVITE comes to the Contact (WAN2): answered from there; our re-INVITE from WAN2
    mark = len(w.sent)
    b.reinvite(cb, OFFER.replace(b"4000", b"4010"), w.now)
    w.run()
    rx = one(w.take(a, ReinviteReceived))
    a.answer_reinvite(inc.call, rx.rid, 200, w.now, sdp=ANSWER)  # type: ignore[attr-defined]
    w.run()
    assert [src for src, _m in w.from_a(b"SIP/2.0 200", mark)] == [WAN2]
    assert one(w.take(b, ReinviteCompleted)).response.status == 200  # type: ignore[attr-defined]


def test_an_in_dialog_request_arriving_elsewhere_than_the_bound_address_is_answered_from_there() -> None:
    w, a, b = arrival_pair()
    call = a.invite(uri(B, "b"), OFFER, w.now)
    a.layer.bind_call(a.call_id(call), WAN2)
    w.run()
    inc = one(w.take(b, IncomingInvite))
    b.answer_invite(inc.call, 200, w.now, sdp=ANSWER)  # type: ignore[attr-defined]
    w.run()
    # the call moves to WAN3 (our re-INVITE leaves from there); the peer's BYE, sent before it heard,
    # still comes to WAN2, and its 200 must come back from WAN2
    a.layer.bind_call(a.call_id(call), WAN3)
    mark = len(w.sent)
    b.bye(inc.call, w.now)  # type: ignore[attr-defined]
    w.run()
    assert [dest for _s, dest, data in w.sent[mark:] if data.startswith(b"BYE ")] == [WAN2]
    [(src, ok)] = w.from_a(b"SIP/2.0 200", mark)
    assert src == WAN2 and ok.cseq.method == "BYE"  # type: ignore[union-attr]
