"""The Twisted `UserAgent` on real sockets: against baresip (calls both ways, RTP at the SDP address,
re-INVITE moving baresip's RTP, late offer, BYE both ways), against itself on loopback (REFER with
its NOTIFYs, INVITE with Replaces, INFO, SUBSCRIBE/NOTIFY), and against PJSIP for what baresip does
not do (REFER with Referred-By, INVITE with Replaces, an attended transfer with Replaces in Refer-To).

baresip and pjsua run through tests/peers/ (loopback only, stopped by PID); RTP is received with
tests/peers/rtp.py's probe. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.peers.baresip import BARESIP, Baresip
from tests.peers.rtp import RtpProbe
from twisted.internet import defer, reactor
from twisted.python.failure import Failure

from sipmob.service.sipua import (
    Call,
    CallFailed,
    IncomingCall,
    IncomingRequest,
    ReferProgress,
    SIPError,
    Subscription,
    UserAgent,
)
from sipmob.sip.headers import Replaces
from sipmob.sip.message import Request
from sipmob.sip.ua import referred_request

needs_baresip = pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)")


def sdp(port: int, version: int = 1) -> bytes:
    return (f"v=0\r\no=sipmob 1 {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
            "a=sendrecv\r\n").encode()


def wait(d: defer.Deferred[Any], timeout: float = 10.0) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    deadline = time.monotonic() + timeout
    while not results and time.monotonic() < deadline:
        reactor.iterate(0.01)  # type: ignore[attr-defined]
    assert results, "the Deferred did not fire in time"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def spin_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        reactor.iterate(0.01)  # type: ignore[attr-defined]
    assert condition(), "condition not met in time"


def wait_packets(probe: RtpProbe, n: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe.wait_for_packets(n, 0.02):
            return True
        reactor.iterate(0.01)  # type: ignore[attr-defined]
    return False


@pytest.fixture
def ua() -> Iterator[UserAgent]:
    agent = UserAgent(reactor, listen=[("127.0.0.1", 0, "udp")], user="mn")
    wait(agent.start())
    yield agent
    wait(agent.stop())


@pytest.fixture
def probe() -> Iterator[RtpProbe]:
    with RtpProbe() as p:
        yield p


@pytest.fixture
def baresip(tmp_path: Path) -> Iterator[Baresip]:
    if BARESIP is None:
        pytest.skip("baresip is not installed")
    peer = Baresip(tmp_path, user="dev1")
    yield peer
    peer.stop()


@needs_baresip
def test_call_to_baresip_gets_its_rtp_at_our_sdp_address(ua: UserAgent, baresip: Baresip,
                                                          probe: RtpProbe) -> None:
    call = wait(ua.invite(baresip.uri, sdp(probe.port)))
    assert isinstance(call, Call) and call.state == "confirmed"
    assert call.remote_sdp is not None and b"m=audio" in call.remote_sdp
    assert wait_packets(probe, 10)
    start = len(baresip.events)
    wait(call.bye())
    baresip.wait_call_event("CALL_CLOSED", start=start)


@needs_baresip
def test_reinvite_moves_baresip_rtp_to_another_port(ua: UserAgent, baresip: Baresip, probe: RtpProbe) -> None:
    call = wait(ua.invite(baresip.uri, sdp(probe.port)))
    assert wait_packets(probe, 5)
    with RtpProbe() as moved:
        response = wait(call.reinvite(sdp(moved.port, version=2)))
        assert response.status == 200
        assert wait_packets(moved, 10)
    wait(call.bye())


@needs_baresip
def test_late_offer_call_to_baresip_answers_in_the_ack(ua: UserAgent, baresip: Baresip,
                                                       probe: RtpProbe) -> None:
    offers: list[bytes] = []

    def answer(offer: bytes) -> bytes:
        offers.append(offer)
        return sdp(probe.port)

    call = wait(ua.invite(baresip.uri, None, ack_sdp=answer))
    assert offers and b"m=audio" in offers[0] and call.local_sdp == sdp(probe.port)
    assert wait_packets(probe, 10)
    wait(call.bye())


@needs_baresip
def test_late_offer_ack_held_until_the_answer_comes_from_elsewhere(ua: UserAgent, baresip: Baresip,
                                                                  probe: RtpProbe) -> None:
    # 3PCC (RFC 3725 flow I): the answer is produced later, as if by a re-INVITE of another party
    def answer_later(offer: bytes) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        reactor.callLater(0.3, d.callback, sdp(probe.port))  # type: ignore[attr-defined]
        return d

    call = wait(ua.invite(baresip.uri, None, ack_sdp=answer_later))
    assert not call.ack_pending and call.local_sdp == sdp(probe.port)
    assert wait_packets(probe, 10)
    wait(call.bye())


@needs_baresip
def test_late_offer_call_acked_by_the_application(ua: UserAgent, baresip: Baresip, probe: RtpProbe) -> None:
    call = wait(ua.invite(baresip.uri, None))
    assert call.ack_pending and call.remote_sdp is not None
    call.ack(sdp(probe.port))
    assert wait_packets(probe, 10)
    wait(call.bye())


@needs_baresip
def test_baresip_calls_us_and_hangs_up(ua: UserAgent, baresip: Baresip, probe: RtpProbe) -> None:
    calls: list[Call] = []

    def incoming(inc: IncomingCall) -> None:
        assert inc.offer is not None
        inc.accept(sdp(probe.port)).addCallback(calls.append)

    ua.on_incoming_call(incoming)
    baresip.dial(f"sip:mn@127.0.0.1:{ua.addresses[0].port}")
    spin_until(lambda: bool(calls))
    assert wait_packets(probe, 10)
    baresip.hangup()
    assert wait(calls[0].terminated) == "bye"


@needs_baresip
def test_options_to_baresip_is_answered(ua: UserAgent, baresip: Baresip) -> None:
    response = wait(ua.options(baresip.uri, timeout=5))
    assert response.status == 200


# UserAgent to UserAgent on loopback -------------------------------------------------------------------


@pytest.fixture
def three() -> Iterator[list[UserAgent]]:
    agents = [UserAgent(reactor, listen=[("127.0.0.1", 0, "udp")], user=name) for name in ("a", "b", "c")]
    for agent in agents:
        wait(agent.start())
    yield agents
    for agent in agents:
        wait(agent.stop())


def target(agent: UserAgent) -> str:
    return str(agent.contact)


def answer_all(agent: UserAgent, port: int, calls: list[Call]) -> None:
    agent.on_incoming_call(lambda inc: inc.accept(sdp(port)).addCallback(calls.append))


def test_refer_makes_the_referee_call_the_target_and_reports_200(three: list[UserAgent]) -> None:
    a, b, c = three
    at_b: list[Call] = []
    at_c: list[Call] = []
    incoming_at_c: list[IncomingCall] = []
    answer_all(b, 4002, at_b)

    def at_c_incoming(inc: IncomingCall) -> None:
        incoming_at_c.append(inc)
        inc.accept(sdp(4004)).addCallback(at_c.append)

    c.on_incoming_call(at_c_incoming)
    call = wait(a.invite(target(b), sdp(4000)))
    spin_until(lambda: bool(at_b))

    def on_refer(referred: Call, request: Request) -> defer.Deferred[Call]:
        to, headers = referred_request(request)
        return b.invite(to, sdp(4006), headers=headers)

    at_b[0].on_refer(on_refer)
    progress = wait(call.refer(target(c), referred_by="<sip:a@127.0.0.1>"))
    assert isinstance(progress, ReferProgress) and progress.response.status == 202
    assert wait(progress.final) == 200
    assert progress.statuses[0] == 100
    spin_until(lambda: bool(at_c))
    referred_by = incoming_at_c[0].referred_by
    assert referred_by is not None and str(referred_by.uri) == "sip:a@127.0.0.1"


def test_refer_without_a_handler_is_declined(three: list[UserAgent]) -> None:
    a, b, _ = three
    at_b: list[Call] = []
    answer_all(b, 4002, at_b)
    call = wait(a.invite(target(b), sdp(4000)))
    with pytest.raises(Exception) as info:
        wait(call.refer("sip:x@127.0.0.1"))
    assert getattr(info.value, "status", None) == 603


def test_invite_with_replaces_ends_the_replaced_call(three: list[UserAgent]) -> None:
    a, b, c = three
    at_b: list[Call] = []
    answer_all(b, 4002, at_b)
    call_ab = wait(a.invite(target(b), sdp(4000)))
    spin_until(lambda: bool(at_b))
    d = call_ab.dialog
    replaces = Replaces(d.call_id, to_tag=d.remote_tag, from_tag=d.local_tag)
    # RFC 3891 §6: referred by the replaced dialog's peer (a); without it b answers 403
    with pytest.raises(CallFailed) as info:
        wait(c.invite(target(b), sdp(4004), headers=[("Replaces", str(replaces))]))
    assert info.value.status == 403 and at_b[0].state == "confirmed"
    call_cb = wait(c.invite(target(b), sdp(4004), headers=[("Replaces", str(replaces)),
                                                           ("Referred-By", f"<{a.aor}>")]))
    assert call_cb.state == "confirmed"
    assert wait(at_b[0].terminated) == "replaced"
    assert wait(call_ab.terminated) == "bye"


def test_rejected_call_errbacks_with_the_status(three: list[UserAgent]) -> None:
    a, b, _ = three
    b.on_incoming_call(lambda inc: inc.reject(603))
    with pytest.raises(CallFailed) as info:
        wait(a.invite(target(b), sdp(4000)))
    assert info.value.status == 603


def test_info_within_a_call_reaches_the_peer_handler(three: list[UserAgent]) -> None:
    a, b, _ = three
    at_b: list[Call] = []
    answer_all(b, 4002, at_b)
    call = wait(a.invite(target(b), sdp(4000)))
    spin_until(lambda: bool(at_b))
    bodies: list[bytes] = []
    at_b[0].on_request("INFO", lambda _call, request: bodies.append(request.body) or 200)
    response = wait(call.info(b"Signal=5\r\n", "application/dtmf-relay"))
    assert response.status == 200 and bodies == [b"Signal=5\r\n"]


def test_subscription_notifies_and_unsubscribe_ends_it(three: list[UserAgent]) -> None:
    a, b, _ = three
    notifier: list[Subscription] = []

    def on_subscribe(incoming: IncomingRequest) -> None:
        subscription = incoming.accept_subscription(60)
        notifier.append(subscription)
        subscription.notify("active;expires=60", b"open", "text/plain")

    b.on_request("SUBSCRIBE", on_subscribe)
    bodies: list[bytes] = []
    subscription = wait(a.subscribe(target(b), "presence", expires=60,
                                    on_notify=lambda _sub, request: bodies.append(request.body)))
    assert isinstance(subscription, Subscription)
    spin_until(lambda: bodies == [b"open"])
    wait(subscription.unsubscribe())
    assert wait(subscription.terminated) == "terminated"
    assert wait(notifier[0].terminated) == "terminated"


# PJSIP, for what baresip does not do: REFER and INVITE with Replaces (PEERS.md) ------------------


@pytest.fixture
def pjsua(tmp_path: Path) -> Iterator[Any]:
    pytest.importorskip("pjsua2", reason="pjsua2 is not installed (tests/requirements.txt)")
    from tests.peers.pjsua import Pjsua
    from tests.peers.ports import free_udp_port

    phone = Pjsua(free_udp_port(), "pj", workdir=tmp_path)
    yield phone
    phone.stop()


def test_pjsip_acts_on_our_refer_with_referred_by_and_reports_200(three: list[UserAgent], pjsua: Any) -> None:
    a, _, c = three
    incoming_at_c: list[IncomingCall] = []

    def at_c(inc: IncomingCall) -> None:
        incoming_at_c.append(inc)
        inc.accept(sdp(4004))

    c.on_incoming_call(at_c)
    call = wait(a.invite(pjsua.uri, sdp(4000)))
    progress = wait(call.refer(target(c), referred_by="<sip:a@127.0.0.1>"))
    assert progress.response.status == 202
    assert wait(progress.final, 15) == 200
    referred_by = incoming_at_c[0].referred_by
    assert referred_by is not None and str(referred_by.uri) == "sip:a@127.0.0.1"


def test_our_invite_with_replaces_makes_pjsip_bye_the_replaced_call(three: list[UserAgent],
                                                                    pjsua: Any) -> None:
    a, _, c = three
    call_ap = wait(a.invite(pjsua.uri, sdp(4000)))
    d = call_ap.dialog
    replaces = Replaces(d.call_id, to_tag=d.remote_tag, from_tag=d.local_tag)
    call_cp = wait(c.invite(pjsua.uri, sdp(4004), headers=[("Replaces", str(replaces))]), 15)
    assert call_cp.state == "confirmed"
    assert wait(call_ap.terminated, 15) == "bye"
    wait(call_cp.bye())


def test_pjsip_attended_transfer_to_us_replaces_the_call_at_the_target(three: list[UserAgent],
                                                                       pjsua: Any) -> None:
    a, _, c = three
    at_a: list[Call] = []
    at_c: list[Call] = []
    answer_all(a, 4000, at_a)
    answer_all(c, 4004, at_c)
    call_pa = pjsua.make_call(target(a))
    spin_until(lambda: bool(at_a))
    call_pc = pjsua.make_call(target(c))
    spin_until(lambda: len(at_c) == 1)
    new_calls: list[Call] = []

    def on_refer(referred: Call, request: Request) -> defer.Deferred[Call]:
        to, headers = referred_request(request)
        assert any(name == "Replaces" for name, _ in headers)
        d = a.invite(to, sdp(4008), headers=headers)
        return d.addCallback(lambda call: new_calls.append(call) or call)

    at_a[0].on_refer(on_refer)
    pjsua.transfer_replaces(call_pa, call_pc)
    assert wait(at_c[0].terminated, 15) == "replaced"
    spin_until(lambda: len(new_calls) == 1 and len(at_c) == 2, 15)
    assert new_calls[0].call_id == at_c[1].call_id


def test_second_reinvite_while_one_is_pending_fails_with_491_and_after_bye_with_481(
        three: list[UserAgent]) -> None:
    a, b, _ = three
    at_b: list[Call] = []
    answer_all(b, 4002, at_b)
    call = wait(a.invite(target(b), sdp(4000)))
    first = call.reinvite(sdp(4000, version=2))
    with pytest.raises(SIPError) as pending:
        wait(call.reinvite(sdp(4000, version=3)))
    assert pending.value.status == 491
    assert wait(first).status == 200
    wait(call.bye())
    with pytest.raises(SIPError) as gone:
        wait(call.info(b"x", "text/plain"))
    assert gone.value.status == 481


def test_call_over_tcp_between_two_user_agents() -> None:
    a = UserAgent(reactor, listen=[("127.0.0.1", 0, "tcp")], user="a")
    b = UserAgent(reactor, listen=[("127.0.0.1", 0, "tcp")], user="b")
    wait(a.start())
    wait(b.start())
    try:
        at_b: list[Call] = []
        answer_all(b, 4002, at_b)
        assert b.contact is not None and b.contact.transport == "tcp"
        call = wait(a.invite(b.contact, sdp(4000)))
        spin_until(lambda: bool(at_b))
        wait(call.bye())
        assert wait(at_b[0].terminated) == "bye"
    finally:
        wait(a.stop())
        wait(b.stop())
