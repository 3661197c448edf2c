"""Who may do what (sipmob.sip.policy) as the UA core applies it: RFC 3891 §6 on Replaces, a
daemon's own policy hook, and the transport rules that keep a sender from choosing where we connect."""

from __future__ import annotations

from tests.unit.sip.test_ua import ALICE, ANSWER, BOB, CAROL, OFFER, Net, core, establish, one, uri

from sipmob.sip.headers import Replaces
from sipmob.sip.message import Headers, Request, Response, parse_message
from sipmob.sip.policy import Admission, Refusal, ReplacesPolicy, replaces_permitted, same_identity
from sipmob.sip.transport import MAX_DATAGRAM, Address, apply_received, fits_transport, response_destination
from sipmob.sip.ua import CallEstablished, CallFailed, CallTerminated, IncomingInvite, UACore
from sipmob.sip.uri import URI

STRANGER = Address("203.0.113.5", 5060, "udp")


def _replace(net: Net, c: UACore, b: UACore, ca: int, a: UACore, referred_by: str | None) -> list[object]:
    d = a.dialog(ca)
    assert d is not None
    replaces = Replaces(d.call_id, to_tag=d.remote_tag, from_tag=d.local_tag)
    headers = [("Replaces", str(replaces))] + ([("Referred-By", referred_by)] if referred_by else [])
    c.invite(uri(BOB, "b"), OFFER, net.now, headers=headers)
    net.run()
    return net.take(b, IncomingInvite)


def test_replaces_from_a_stranger_gets_403_and_the_call_stays() -> None:
    a, b, c = core(ALICE, "alice"), core(BOB, "bob"), core(CAROL, "carol")
    net = Net(a, b, c)
    ca, cb = establish(net, a, b)
    assert _replace(net, c, b, ca, a, None) == []
    failed = one(net.take(c, CallFailed))
    assert isinstance(failed, CallFailed) and failed.status == 403
    assert b.call_state(cb) == "confirmed" and a.call_state(ca) == "confirmed"
    assert net.take(b, CallTerminated) == [] and net.sent("BYE") == []


def test_replaces_referred_by_a_stranger_gets_403() -> None:
    a, b, c = core(ALICE, "alice"), core(BOB, "bob"), core(CAROL, "carol")
    net = Net(a, b, c)
    ca, cb = establish(net, a, b)
    assert _replace(net, c, b, ca, a, "<sip:mallory@203.0.113.5>") == []
    assert b.call_state(cb) == "confirmed"


def test_replaces_referred_by_an_owner_is_honoured() -> None:
    owner = URI.parse("sip:owner@home.example")
    a, b, c = core(ALICE, "alice"), core(BOB, "bob", policy=ReplacesPolicy([owner])), core(CAROL, "carol")
    net = Net(a, b, c)
    ca, cb = establish(net, a, b)
    inc = one(_replace(net, c, b, ca, a, "<sip:owner@home.example>"))
    assert isinstance(inc, IncomingInvite) and inc.replaces_call == cb


def test_replaces_by_the_replaced_dialogs_own_peer_is_honoured() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob")
    net = Net(a, b)
    ca, cb = establish(net, a, b)
    inc = one(_replace(net, a, b, ca, a, None))
    assert isinstance(inc, IncomingInvite) and inc.replaces_call == cb
    b.answer_invite(inc.call, 200, net.now, sdp=ANSWER)
    net.run()
    assert one(net.take(b, CallTerminated)) == CallTerminated(cb, "replaced")


class _Counting:
    def __init__(self, refusal: Refusal | None) -> None:
        self.seen: list[Admission] = []
        self.refusal = refusal

    def admit(self, admission: Admission) -> Refusal | None:
        self.seen.append(admission)
        return self.refusal


def test_the_policy_is_asked_before_any_out_of_dialog_request_and_its_refusal_answered() -> None:
    policy = _Counting(Refusal(404))
    a, b = core(ALICE, "alice"), core(BOB, "bob", policy=policy)
    net = Net(a, b)
    a.invite(uri(BOB, "nobody"), OFFER, 0.0)
    a.request("OPTIONS", uri(BOB, "nobody"), 0.0)
    net.run()
    assert [s.request.method for s in policy.seen] == ["INVITE", "OPTIONS"]
    assert policy.seen[0].source == ALICE and policy.seen[0].replaced is None
    assert net.take(b, IncomingInvite) == []
    assert sorted(r.status for r in net.sent("INVITE") + net.sent("OPTIONS") if isinstance(r, Response)) == \
        [404, 404]


def test_in_dialog_requests_are_asked_with_their_dialog_before_they_act() -> None:
    policy = _Counting(None)
    a, b = core(ALICE, "alice"), core(BOB, "bob", policy=policy)
    net = Net(a, b)
    ca, cb = establish(net, a, b)
    a.reinvite(ca, OFFER, net.now)
    net.run()
    assert [s.request.method for s in policy.seen] == ["INVITE", "INVITE"]
    assert policy.seen[0].dialog is None and policy.seen[1].dialog is b.dialog(cb)


def test_same_identity_ignores_parameters_and_a_missing_port() -> None:
    assert same_identity(URI.parse("sip:cn@10.0.0.5:5070;ob"), URI.parse("sips:cn@10.0.0.5"))
    assert not same_identity(URI.parse("sip:cn@10.0.0.5:5070"), URI.parse("sip:cn@10.0.0.5:5071"))
    assert not same_identity(URI.parse("sip:cn@10.0.0.5"), URI.parse("sip:CN@10.0.0.5"))


def test_replaces_permitted_with_an_unreadable_referred_by_falls_back_to_from() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob")
    net = Net(a, b)
    _, cb = establish(net, a, b)
    replaced = b.dialog(cb)
    assert replaced is not None
    h = Headers([("Via", "SIP/2.0/UDP 203.0.113.5;branch=z9hG4bKx"), ("From", "<sip:m@203.0.113.5>;tag=1"),
                 ("To", "<sip:b@127.0.0.1>"), ("Call-ID", "c"), ("CSeq", "1 INVITE"),
                 ("Referred-By", "<<<")])
    assert not replaces_permitted(replaced, Request("INVITE", URI.parse("sip:b@127.0.0.1"), h))


# Transport -----------------------------------------------------------------------------------------


def _request(via: str) -> Request:
    h = Headers([("Via", via), ("From", "<sip:m@203.0.113.5>;tag=1"), ("To", "<sip:b@127.0.0.1>"),
                 ("Call-ID", "c"), ("CSeq", "1 OPTIONS")])
    return Request("OPTIONS", URI.parse("sip:b@127.0.0.1"), h)


def test_a_udp_request_whose_via_says_tcp_is_answered_over_udp_to_its_source() -> None:
    request = apply_received(_request("SIP/2.0/TCP 198.51.100.7:22;branch=z9hG4bKx"), STRANGER)
    assert request.top_via.transport == "UDP"
    assert response_destination(request, None) == Address("203.0.113.5", 5060, "udp")
    assert response_destination(request, STRANGER) == Address("203.0.113.5", 5060, "udp")


def test_a_tcp_request_whose_via_says_udp_is_answered_on_its_connection() -> None:
    source = Address("203.0.113.5", 40000, "tcp")
    request = apply_received(_request("SIP/2.0/UDP 198.51.100.7:9;branch=z9hG4bKx"), source)
    assert response_destination(request, source) == source


def test_the_core_answers_a_via_tcp_request_over_udp_without_connecting() -> None:
    b = core(BOB, "bob")
    data = _request("SIP/2.0/TCP 198.51.100.7:22;branch=z9hG4bKx").to_bytes()
    b.receive(data, STRANGER, 0.0)
    out = b.messages_to_send()
    assert [dest for _, dest in out] == [Address("203.0.113.5", 5060, "udp")]


def test_a_2xx_too_large_for_udp_is_answered_513_and_the_call_fails() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob")
    net = Net(a, b)
    ca = a.invite(uri(BOB, "b"), OFFER, 0.0)
    net.run()
    inc = one(net.take(b, IncomingInvite))
    assert isinstance(inc, IncomingInvite)
    b.answer_invite(inc.call, 200, net.now, sdp=ANSWER + b"a=x:" + b"y" * MAX_DATAGRAM + b"\r\n")
    net.run()
    assert one(net.take(a, CallFailed)) == CallFailed(ca, 513, "Message Too Large")
    assert isinstance(one(net.take(b, CallFailed)), CallFailed)
    assert net.take(a, CallEstablished) == [] and len(b) == 0


def test_a_large_answer_over_tcp_is_not_refused() -> None:
    response = parse_message(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bKx\r\n"
                             b"From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\n"
                             b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(response, Response)
    assert fits_transport(response, MAX_DATAGRAM * 2)
