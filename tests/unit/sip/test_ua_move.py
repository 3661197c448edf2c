"""A UA whose address changes (HMMP; a multihomed host's egress failed): `UACore.set_local`."""

from __future__ import annotations

from tests.unit.sip.test_ua import ALICE, ANSWER, OFFER, Net, core, establish, one
from tests.unit.sip.test_ua_auth import SERVER_URI, registrar_answers
from tests.unit.sip.test_ua_auth import Pair as RegistrarPair

from sipmob.sip.message import Request, parse_message
from sipmob.sip.transport import Address
from sipmob.sip.ua import CallTerminated, Registered, ReinviteCompleted, ReinviteReceived

MOVED = Address("127.0.0.2", 5070, "udp")


def test_after_a_move_the_reinvite_names_the_new_address_and_the_peer_follows() -> None:
    a, b = core(ALICE, "alice"), core(Address("127.0.0.1", 5080, "udp"), "bob", seed=2)
    net = Net(a, b)
    ca, cb = establish(net, a, b)
    a.set_local([MOVED], net.now)
    net.by_addr = {MOVED if addr == ALICE else addr: ua for addr, ua in net.by_addr.items()}
    a.reinvite(ca, OFFER.replace(b"4000", b"4002"), net.now)
    net.run()
    rx = one(net.take(b, ReinviteReceived))
    request = rx.request  # type: ignore[attr-defined]
    assert (request.contact[0].uri.host, request.contact[0].uri.port) == ("127.0.0.2", 5070)
    assert (request.vias[0].host, request.vias[0].port) == ("127.0.0.2", 5070)
    b.answer_reinvite(cb, rx.rid, 200, net.now, sdp=ANSWER)  # type: ignore[attr-defined]
    net.run()
    assert one(net.take(a, ReinviteCompleted)).response.status == 200  # type: ignore[attr-defined]
    b.bye(cb, net.now)
    net.run()
    byes = [dest for _src, dest, data in net.wire if data.startswith(b"BYE ")]
    assert [(d.host, d.port) for d in byes] == [("127.0.0.2", 5070)]
    assert net.take(a, CallTerminated)


def test_a_move_registers_the_new_contact_at_once_and_removes_the_old_one() -> None:
    p = RegistrarPair()
    reg = p.alice.register(SERVER_URI, p.now, expires=600)
    registrar_answers(p, headers=[("Expires", "600")])
    old = p.alice.contact_uri
    p.alice.set_local([MOVED], p.now)
    again = registrar_answers(p, headers=[("Expires", "600")])
    contacts = again.contact
    assert (contacts[0].uri.host, contacts[0].uri.port) == ("127.0.0.2", 5070)
    assert contacts[1].uri == old and contacts[1].param("expires") == "0"
    assert [e for e in p.events if isinstance(e, Registered)] == [Registered(reg, 600)] * 2
    first = parse_message(p.sent[0])
    assert isinstance(first, Request) and again.call_id == first.call_id  # the same binding
