"""Our Contact over TCP says ``transport=tcp`` (RFC 3261 §8.1.1.8, §12.1): the peer sends its requests
of the dialog to the Contact, and without the parameter it would send them over UDP."""

from __future__ import annotations

import itertools
import random

from tests.unit.sip.test_ua import ANSWER, OFFER, T1, one

from sipmob.sip.message import Request, Response, parse_message
from sipmob.sip.transaction import TimerConfig, TransactionLayer
from sipmob.sip.transport import Address
from sipmob.sip.ua import CallEstablished, CallTerminated, IncomingInvite, UACore
from sipmob.sip.uri import URI

A_UDP, A_TCP = Address("10.0.1.2", 5060, "udp"), Address("10.0.1.2", 5060, "tcp")
WAN2_UDP, WAN2_TCP = Address("10.0.2.2", 5062, "udp"), Address("10.0.2.2", 5063, "tcp")
B_UDP, B_TCP = Address("192.0.2.1", 5080, "udp"), Address("192.0.2.1", 5080, "tcp")


def core(local: list[Address], name: str) -> UACore:
    counter = itertools.count()
    return UACore(local, user=name, token=lambda: f"{name}{next(counter)}", rng=random.Random(1),
                  timers=TimerConfig(t1=T1))


class Wire:
    """Two cores; a message arrives from the sender's address of the transport it travels."""

    def __init__(self) -> None:
        self.a, self.b = core([A_UDP, A_TCP], "alice"), core([B_UDP, B_TCP], "bob")
        self.a_addresses = {A_UDP, A_TCP, WAN2_UDP, WAN2_TCP}
        self.sent: list[tuple[Address, Address, bytes]] = []  # (from, to, data)
        self.events: list[object] = []

    def run(self) -> None:
        for _ in range(50):
            moved = 0
            for ua, peer, others in ((self.a, self.b, {B_UDP, B_TCP}), (self.b, self.a, self.a_addresses)):
                for data, dest, local in ua.messages_to_send_from():
                    src = local or ua.layer._local[dest.transport]
                    self.sent.append((src, dest, data))
                    if dest in others:
                        peer.receive(data, src, 0.0)
                        moved += 1
            for ua in (self.a, self.b):
                while (event := ua.next_event()) is not None:
                    self.events.append(event)
            if not moved:
                return

    def take(self, kind: type) -> list[object]:
        out = [e for e in self.events if isinstance(e, kind)]
        self.events = [e for e in self.events if not isinstance(e, kind)]
        return out

    def sent_by_a(self, start: bytes, after: int = 0) -> list[tuple[Address, Request | Response]]:
        return [(dest, parse_message(data)) for src, dest, data in self.sent[after:]
                if src in self.a_addresses and data.startswith(start)]

    def requests_to_a(self, method: bytes, after: int = 0) -> list[Address]:
        return [dest for _src, dest, data in self.sent[after:] if data.startswith(method + b" ")]


def contact(message: Request | Response) -> URI:
    return message.contact[0].uri


def where(uri: URI) -> tuple[str, int | None, str | None]:
    return uri.host, uri.port, uri.transport


def call(w: Wire, transport: str, bind: tuple[Address, Address] | None = None) -> tuple[int, int]:
    ca = w.a.invite(URI.parse(f"sip:bob@192.0.2.1:5080;transport={transport}"), OFFER, 0.0)
    if bind is not None:
        w.a.layer.add_local(bind[1])
        w.a.layer.bind_call(w.a.call_id(ca), bind[0])
    w.run()
    inc = one(w.take(IncomingInvite))
    assert isinstance(inc, IncomingInvite)
    w.b.answer_invite(inc.call, 200, 0.0, sdp=ANSWER)
    w.run()
    assert w.take(CallEstablished)
    return ca, inc.call


def test_a_call_over_tcp_has_a_tcp_contact_and_the_peers_requests_come_over_tcp() -> None:
    w = Wire()
    _ca, cb = call(w, "tcp")
    [(dest, invite)] = w.sent_by_a(b"INVITE ")
    assert dest == B_TCP
    assert where(contact(invite)) == ("10.0.1.2", 5060, "tcp")
    mark = len(w.sent)
    w.b.bye(cb, 0.0)
    w.run()
    assert w.requests_to_a(b"BYE", mark) == [A_TCP]
    assert w.take(CallTerminated)


def test_a_call_over_udp_keeps_its_contact_without_transport() -> None:
    w = Wire()
    _ca, cb = call(w, "udp")
    [(_dest, invite)] = w.sent_by_a(b"INVITE ")
    assert contact(invite).transport is None and contact(invite).port == 5060
    w.b.bye(cb, 0.0)
    w.run()
    assert w.requests_to_a(b"BYE") == [A_UDP]


def test_a_call_bound_to_an_egress_over_tcp_names_the_egress_tcp_address() -> None:
    w = Wire()
    _ca, cb = call(w, "tcp", bind=(WAN2_UDP, WAN2_TCP))
    [(_dest, invite)] = w.sent_by_a(b"INVITE ")
    assert where(contact(invite)) == ("10.0.2.2", 5063, "tcp")
    mark = len(w.sent)
    w.b.bye(cb, 0.0)
    w.run()
    assert w.requests_to_a(b"BYE", mark) == [WAN2_TCP]


def test_an_incoming_call_over_tcp_is_answered_with_a_tcp_contact() -> None:
    w = Wire()
    cb = w.b.invite(URI.parse("sip:alice@10.0.1.2:5060;transport=tcp"), OFFER, 0.0)
    w.run()
    inc = one(w.take(IncomingInvite))
    assert isinstance(inc, IncomingInvite)
    w.a.answer_invite(inc.call, 200, 0.0, sdp=ANSWER)
    w.run()
    [(_dest, ok)] = w.sent_by_a(b"SIP/2.0 200")
    assert contact(ok).transport == "tcp"
    assert w.take(CallEstablished)
    ca = inc.call
    mark = len(w.sent)
    w.a.bye(ca, 0.0)  # and ours go the way the peer's Contact says
    w.run()
    assert [d for d, _ in w.sent_by_a(b"BYE ", mark)] == [B_TCP] and cb


def test_a_register_over_tcp_binds_a_tcp_contact_and_so_does_the_next_after_a_move() -> None:
    w = Wire()
    w.a.register(URI.parse("sip:192.0.2.1:5080;transport=tcp"), 0.0)
    w.run()
    [(dest, register)] = w.sent_by_a(b"REGISTER ")
    assert dest == B_TCP and contact(register).transport == "tcp"
    # our address changes (HMMP): the new Contact over TCP names our new TCP address
    w.a.set_local([WAN2_UDP, WAN2_TCP], 0.0)
    w.run()
    [(dest, again)] = w.sent_by_a(b"REGISTER ")[1:]
    assert dest == B_TCP
    assert [(c.uri.host, c.uri.port, c.uri.transport) for c in again.contact] == [("10.0.2.2", 5063, "tcp")]


def test_the_old_contact_a_register_removes_over_tcp_is_the_one_it_bound() -> None:
    layer = TransactionLayer([A_UDP, A_TCP])
    layer.set_local([WAN2_UDP, WAN2_TCP])
    register = parse_message(
        b"REGISTER sip:192.0.2.1:5080;transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.2.2;branch=z9hG4bKr\r\n"
        b"Max-Forwards: 70\r\n"
        b"From: <sip:alice@192.0.2.1>;tag=1\r\nTo: <sip:alice@192.0.2.1>\r\nCall-ID: r1\r\n"
        b"CSeq: 2 REGISTER\r\nContact: <sip:alice@10.0.2.2:5062>\r\n"
        b"Contact: <sip:alice@10.0.1.2:5060>;expires=0\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(register, Request)
    layer.send_request(register, B_TCP, 0.0)
    [(data, dest)] = layer.messages_to_send()
    sent = parse_message(data)
    assert dest == B_TCP
    assert [(*where(c.uri), c.param("expires")) for c in sent.contact] == [
        ("10.0.2.2", 5063, "tcp", None), ("10.0.1.2", 5060, "tcp", "0")]
