"""Reliable provisional responses (RFC 3262): the table, and two in-memory UAs with fake time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.sip.test_ua import ALICE, ANSWER, BOB, OFFER, T1, Net, core, one, uri

from sipmob.sip.message import Headers, Request, Response, make_response, parse_message
from sipmob.sip.prack import (
    TRANSITIONS,
    Input,
    PrackError,
    RAck,
    ReliableProvisionals,
    ReliableReceiver,
    State,
    Verdict,
    rseq_of,
    uas_wants_reliable,
)
from sipmob.sip.ua import (
    ALLOW,
    CallEstablished,
    CallFailed,
    CallProgress,
    IncomingInvite,
    RequestReceived,
    UACore,
)
from sipmob.sip.uri import URI

# The state machine ----------------------------------------------------------------------------------


def _invite(*extra: tuple[str, str]) -> Request:
    h = Headers([("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx"), ("From", "<sip:a@h>;tag=1"),
                 ("To", "<sip:b@h>"), ("Call-ID", "c"), ("CSeq", "7 INVITE"), *extra])
    return Request("INVITE", URI.parse("sip:b@h"), h)


def _1xx(rel: ReliableProvisionals, status: int = 180) -> Response:
    return make_response(_invite(), status, to_tag="t", headers=rel.next_headers())


def test_every_state_has_a_row_and_every_row_leads_to_a_state() -> None:
    assert {s for s, _ in TRANSITIONS} == {State.IDLE, State.AWAITING_PRACK}
    assert all(isinstance(nxt, State) for _, nxt in TRANSITIONS.values())
    # §3: a final failure may always go at once; a 2xx never overtakes an unacknowledged 1xx
    assert all((s, Input.SEND_FAILURE) in TRANSITIONS for s in (State.IDLE, State.AWAITING_PRACK))


def test_rack_parses_and_prints_and_rejects_garbage() -> None:
    assert RAck.parse("776656 1 invite") == RAck(776656, 1, "INVITE")
    assert str(RAck(5, 2, "INVITE")) == "5 2 INVITE"
    for bad in ("", "1 2", "x 1 INVITE", "1 y INVITE"):
        with pytest.raises(PrackError):
            RAck.parse(bad)


def test_require_makes_it_demanded_supported_makes_it_wanted() -> None:
    assert uas_wants_reliable(_invite(("Require", "100rel")).headers) == (True, True)
    assert uas_wants_reliable(_invite(("Supported", "replaces, 100REL")).headers) == (True, False)
    assert uas_wants_reliable(_invite(("Supported", "replaces")).headers) == (False, False)


def test_rseq_read_only_from_a_reliable_1xx() -> None:
    rel = ReliableProvisionals(7, t1=T1, first_rseq=10)
    assert rseq_of(_1xx(rel)) == 10
    assert rseq_of(make_response(_invite(), 180, to_tag="t", headers=[("RSeq", "3")])) is None
    assert rseq_of(make_response(_invite(), 180, to_tag="t", headers=[("Require", "100rel")])) is None


def test_a_reliable_1xx_is_sent_again_doubling_until_its_prack() -> None:
    rel = ReliableProvisionals(7, t1=T1, first_rseq=1)
    ringing = _1xx(rel)
    assert rel.send(ringing, 0.0) == [ringing] and rel.deadline == T1
    sent_at = []
    now = 0.0
    while rel.deadline is not None and rel.deadline < 3.6:
        now = rel.deadline
        again, reject = rel.expire(now)
        assert again == [ringing] and not reject
        sent_at.append(now)
    assert sent_at == [T1, 3 * T1, 7 * T1]  # intervals T1, 2*T1, 4*T1
    matched, release = rel.prack(RAck(1, 7, "INVITE"), now)
    assert matched and release == [] and rel.deadline is None and rel.state is State.IDLE


def test_no_prack_within_64_t1_rejects_the_invite() -> None:
    rel = ReliableProvisionals(7, t1=T1, first_rseq=1)
    rel.send(_1xx(rel), 0.0)
    reject = False
    while rel.deadline is not None:
        _, reject = rel.expire(rel.deadline)
    assert reject and rel.state is State.DONE


def test_a_prack_naming_another_rseq_or_cseq_does_not_match() -> None:
    rel = ReliableProvisionals(7, t1=T1, first_rseq=4)
    rel.send(_1xx(rel), 0.0)
    for rack in (RAck(5, 7, "INVITE"), RAck(4, 8, "INVITE"), RAck(4, 7, "UPDATE")):
        assert rel.prack(rack, 1.0) == (False, [])
    assert rel.state is State.AWAITING_PRACK


def test_the_2xx_and_a_second_1xx_wait_for_the_prack_in_order() -> None:
    rel = ReliableProvisionals(7, t1=T1, first_rseq=1)
    first, second = _1xx(rel, 180), _1xx(rel, 183)
    ok = make_response(_invite(), 200, to_tag="t")
    assert rel.send(first, 0.0) == [first]
    assert rel.send(second, 0.1) == [] and rel.send(ok, 0.2) == [] and rel.holding_final
    assert rel.prack(RAck(1, 7, "INVITE"), 0.3) == (True, [second])
    assert rel.prack(RAck(1, 7, "INVITE"), 0.4) == (False, [])  # the first was acknowledged already
    assert rel.prack(RAck(2, 7, "INVITE"), 0.5) == (True, [ok])
    assert rel.state is State.DONE


def test_a_failure_goes_at_once_and_stops_the_retransmissions() -> None:
    rel = ReliableProvisionals(7, t1=T1, first_rseq=1)
    rel.send(_1xx(rel), 0.0)
    busy = make_response(_invite(), 486, to_tag="t")
    assert rel.send(busy, 0.1) == [busy] and rel.deadline is None


def test_the_uac_acknowledges_in_order_and_drops_repeats_and_gaps() -> None:
    r = ReliableReceiver()
    assert [r.receive(n) for n in (8, 8, 10, 9, 9)] == [
        Verdict.ACKNOWLEDGE, Verdict.DROP, Verdict.DROP, Verdict.ACKNOWLEDGE, Verdict.DROP]


# Two user agents --------------------------------------------------------------------------------------


def _ring(net: Net, a: object, b: object, sdp: bytes | None = OFFER, **kw: object) -> tuple[int, int]:
    ca = a.invite(uri(BOB, "b"), sdp, net.now, **kw)  # type: ignore[attr-defined]
    net.run()
    inc = one(net.take(b, IncomingInvite))  # type: ignore[arg-type]
    return ca, inc.call  # type: ignore[attr-defined]


def test_our_invites_say_supported_100rel_and_our_180_goes_reliably_and_is_pracked() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob", seed=2)
    net = Net(a, b)
    ca, cb = _ring(net, a, b)
    invite = net.sent("INVITE")[0]
    assert "100rel" in ",".join(invite.headers.get_all("Supported"))
    b.answer_invite(cb, 180, net.now)
    net.run()
    ringing = [m for m in net.sent("INVITE") if isinstance(m, Response) and m.status == 180]
    assert len(ringing) == 1 and rseq_of(ringing[0]) is not None
    prack = one([m for m in net.sent("PRACK") if isinstance(m, Request)])
    assert isinstance(prack, Request)
    assert RAck.parse(prack.headers.get("RAck") or "") == RAck(rseq_of(ringing[0]) or 0, 1, "INVITE")
    assert [m.status for m in net.sent("PRACK") if isinstance(m, Response)] == [200]
    assert one(net.take(a, CallProgress)).response.status == 180  # type: ignore[attr-defined]
    b.answer_invite(cb, 200, net.now, sdp=ANSWER)
    net.run()
    assert a.call_state(ca) == b.call_state(cb) == "confirmed"


def test_the_2xx_waits_for_a_prack_that_was_lost_once() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob", seed=2)
    net = Net(a, b)
    ca, cb = _ring(net, a, b)
    lost = []

    def lose_first_prack(msg: Request | Response) -> bool:
        if isinstance(msg, Request) and msg.method == "PRACK" and not lost:
            lost.append(msg)
            return True
        return False

    b.answer_invite(cb, 180, net.now)
    net.run(lose_first_prack)
    b.answer_invite(cb, 200, net.now, sdp=ANSWER)
    net.run(lose_first_prack)
    assert not [m for m in net.sent("INVITE") if isinstance(m, Response) and m.status == 200]
    net.advance(net.now + 4 * T1, lose_first_prack)  # Timer E sends the PRACK again
    assert lost and a.call_state(ca) == b.call_state(cb) == "confirmed"
    # the 180 retransmitted while the PRACK was lost is neither new progress nor PRACKed again
    assert len(net.take(a, CallProgress)) == 1
    assert len([m for m in net.sent("PRACK") if isinstance(m, Request)]) == 2  # the lost one, resent


def test_a_caller_that_never_pracks_gets_a_5xx_after_64_t1() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob", seed=2)
    net = Net(a, b)
    ca, cb = _ring(net, a, b, headers=[("Require", "100rel")])
    b.answer_invite(cb, 180, net.now)

    def no_prack(msg: Request | Response) -> bool:
        return isinstance(msg, Request) and msg.method == "PRACK"

    net.run(no_prack)
    net.advance(70 * T1, no_prack)
    failed = one(net.take(b, CallFailed))
    assert failed.status == 504  # type: ignore[attr-defined]
    assert one(net.take(a, CallFailed)).status == 504  # type: ignore[attr-defined]
    assert len(b) == 0 and len(a) == 0
    again = [m for m in net.sent("INVITE") if isinstance(m, Response) and m.status == 180]
    assert 5 <= len(again) <= 8  # T1 doubling up to 64*T1


def test_a_stray_prack_gets_481() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob", seed=2)
    net = Net(a, b)
    ca, cb = _ring(net, a, b)
    b.answer_invite(cb, 180, net.now)
    net.run()
    b.answer_invite(cb, 200, net.now, sdp=ANSWER)
    net.run()
    d = a.dialog(ca)
    assert d is not None
    a.request_in_call(ca, "PRACK", net.now, headers=[("RAck", "1 1 INVITE")])
    net.run()
    finals = [m.status for m in net.sent("PRACK") if isinstance(m, Response)]
    assert finals == [200, 481]
    assert a.call_state(ca) == "confirmed"  # a refused PRACK ends nothing


def test_late_offer_gets_the_offer_in_the_reliable_183_and_the_answer_in_the_prack() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob", seed=2)
    net = Net(a, b)
    ca, cb = _ring(net, a, b, sdp=None, answer_for=lambda offer: ANSWER)
    b.answer_invite(cb, 183, net.now, sdp=OFFER)
    net.run()
    prack = one([m for m in net.sent("PRACK") if isinstance(m, Request)])
    assert prack.body == ANSWER  # type: ignore[union-attr]
    b.answer_invite(cb, 200, net.now, sdp=OFFER)
    net.run()
    ack = one(net.sent("ACK"))
    assert ack.body == b""  # type: ignore[union-attr]  # the answer went in the PRACK already
    assert a.sdp(ca) == (ANSWER, OFFER) and b.sdp(cb) == (OFFER, ANSWER)
    assert isinstance(one(net.take(b, CallEstablished)), CallEstablished)


def test_the_answer_in_a_reliable_183_is_the_callers_remote_description() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob", seed=2)
    net = Net(a, b)
    ca, cb = _ring(net, a, b)
    b.answer_invite(cb, 183, net.now, sdp=ANSWER)
    net.run()
    assert a.sdp(ca) == (OFFER, ANSWER) and b.sdp(cb) == (ANSWER, OFFER)


def test_a_late_offer_without_require_rings_unreliably_without_sdp() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob", seed=2)
    net = Net(a, b)
    _ca, cb = _ring(net, a, b, sdp=None, answer_for=lambda offer: ANSWER)
    b.answer_invite(cb, 180, net.now)
    net.run()
    ringing = [m for m in net.sent("INVITE") if isinstance(m, Response) and m.status == 180]
    assert rseq_of(ringing[0]) is None and net.sent("PRACK") == []


# UPDATE in an early dialog (RFC 3311 §5.2) ------------------------------------------------------------

UPDATE_OFFER = OFFER.replace(b"4000", b"4002").replace(b"a 1 1", b"a 1 2")
ANSWER_AGAIN = ANSWER + b"a=sendrecv\r\n"


def _updating_pair() -> tuple[Net, UACore, UACore]:
    a = core(ALICE, "alice", allow=(*ALLOW, "UPDATE"))
    b = core(BOB, "bob", seed=2, allow=(*ALLOW, "UPDATE"))
    return Net(a, b), a, b


def _update_finals(net: Net) -> list[Response]:
    return [m for m in net.sent("UPDATE") if isinstance(m, Response)]


def test_an_early_update_offer_before_the_invites_offer_is_answered_gets_500_retry_after() -> None:
    net, a, b = _updating_pair()
    ca, cb = _ring(net, a, b)
    b.answer_invite(cb, 180, net.now)  # reliable, without SDP: the INVITE's offer is unanswered
    net.run()
    a.request_in_call(ca, "UPDATE", net.now, body=UPDATE_OFFER, content_type="application/sdp")
    net.run()
    (final,) = _update_finals(net)
    assert final.status == 500 and final.headers.get("Retry-After") is not None
    assert net.take(b, RequestReceived) == []
    b.answer_invite(cb, 200, net.now, sdp=ANSWER)
    net.run()
    assert a.call_state(ca) == b.call_state(cb) == "confirmed"  # the call goes on


def test_an_early_update_offer_after_the_answer_in_a_reliable_183_reaches_the_application() -> None:
    net, a, b = _updating_pair()
    ca, cb = _ring(net, a, b)
    b.answer_invite(cb, 183, net.now, sdp=ANSWER)
    net.run()
    a.request_in_call(ca, "UPDATE", net.now, body=UPDATE_OFFER, content_type="application/sdp")
    net.run()
    received = one(net.take(b, RequestReceived))
    assert received.request.body == UPDATE_OFFER  # type: ignore[attr-defined]
    b.respond(received.rid, 200, net.now, body=ANSWER, content_type="application/sdp")  # type: ignore[attr-defined]
    net.run()
    (final,) = _update_finals(net)
    assert final.status == 200 and final.body == ANSWER
    b.answer_invite(cb, 200, net.now, sdp=ANSWER)
    net.run()
    assert a.call_state(ca) == b.call_state(cb) == "confirmed"


def test_an_early_update_offer_while_ours_is_unanswered_gets_491() -> None:
    net, a, b = _updating_pair()
    ca, cb = _ring(net, a, b, sdp=None, answer_for=lambda offer: ANSWER)
    b.answer_invite(cb, 183, net.now, sdp=OFFER)  # our offer in a reliable 183...
    net.run(lambda m: isinstance(m, Request) and m.method == "PRACK")  # ...whose answer is lost
    a.request_in_call(ca, "UPDATE", net.now, body=UPDATE_OFFER, content_type="application/sdp")
    net.run(lambda m: isinstance(m, Request) and m.method == "PRACK")
    (final,) = _update_finals(net)
    assert final.status == 491


# Any order of events ----------------------------------------------------------------------------------

_STEPS = st.lists(st.sampled_from(["1xx", "2xx", "486", "prack", "stale-prack", "tick"]), max_size=30)


@given(_STEPS)
@settings(max_examples=300, deadline=None)
def test_no_2xx_ever_overtakes_an_unacknowledged_reliable_1xx(steps: list[str]) -> None:
    rel = ReliableProvisionals(7, t1=T1, first_rseq=1)
    now = 0.0
    unacknowledged: list[int] = []  # RSeqs sent and not PRACKed, in order
    sent_final = False
    for step in steps:
        out: list[Response] = []
        if step == "1xx":
            out = rel.send(_1xx(rel), now)
        elif step == "2xx":
            out = rel.send(make_response(_invite(), 200, to_tag="t"), now)
        elif step == "486":
            out = rel.send(make_response(_invite(), 486, to_tag="t"), now)
        elif step == "prack" and unacknowledged:
            matched, out = rel.prack(RAck(unacknowledged[0], 7, "INVITE"), now)
            assert matched
            unacknowledged.pop(0)
        elif step == "stale-prack":
            assert rel.prack(RAck(10**6, 7, "INVITE"), now) == (False, [])
        elif step == "tick":
            now += 1.0
            again, _reject = rel.expire(now)
            out = [] if again and again[0].status < 200 else again
        for response in out:
            if response.status < 200:
                assert not sent_final
                unacknowledged.append(rseq_of(response) or 0)
            else:
                assert response.status >= 300 or not unacknowledged  # §3
                sent_final = True
        assert len(unacknowledged) <= 1  # one reliable 1xx outstanding at a time
        if rel.state is State.DONE:
            unacknowledged.clear()


def _prack_with(a: UACore, body: bytes) -> None:
    """The caller's core sends PRACK without a body; stand in for a peer that puts one in it."""
    original = a.layer.send_request

    def with_body(request: Request, *args: object, **kw: object) -> object:
        if request.method == "PRACK":
            request = Request("PRACK", request.uri, request.headers.copy(), body)
            request.headers.set("Content-Type", "application/sdp")
        return original(request, *args, **kw)  # type: ignore[arg-type]

    a.layer.send_request = with_body  # type: ignore[method-assign]


def test_a_new_offer_in_a_prack_is_answered_by_the_application_before_the_2xx_goes() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob", seed=2)
    net = Net(a, b)
    ca, cb = _ring(net, a, b)
    b.answer_invite(cb, 183, net.now, sdp=ANSWER)  # the first exchange completes here
    _prack_with(a, UPDATE_OFFER)
    net.run()
    received = one(net.take(b, RequestReceived))
    assert received.request.method == "PRACK" and received.request.body == UPDATE_OFFER  # type: ignore[attr-defined]
    assert [m for m in net.sent("PRACK") if isinstance(m, Response)] == []
    # the 2xx the application sends meanwhile waits behind the PRACK's answer (RFC 3262 §5)
    b.answer_invite(cb, 200, net.now, sdp=ANSWER_AGAIN)
    net.run()
    assert not [m for m in net.sent("INVITE") if isinstance(m, Response) and m.status == 200]
    b.respond(received.rid, 200, net.now, body=ANSWER_AGAIN, content_type="application/sdp")  # type: ignore[attr-defined]
    net.run()
    (prack_ok,) = [m for m in net.sent("PRACK") if isinstance(m, Response)]
    assert prack_ok.status == 200 and prack_ok.body == ANSWER_AGAIN
    finals = [m for m in (parse_message(data) for _, _, data in net.wire)
              if isinstance(m, Response) and m.status == 200 and m.cseq.method in ("PRACK", "INVITE")]
    assert [m.cseq.method for m in finals][-2:] == ["PRACK", "INVITE"]  # the 183's PRACK had none
    assert a.call_state(ca) == b.call_state(cb) == "confirmed"
    assert b.sdp(cb) == (ANSWER_AGAIN, UPDATE_OFFER)


def test_an_offer_in_a_prack_refused_by_the_application_keeps_the_session_and_the_call() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob", seed=2)
    net = Net(a, b)
    ca, cb = _ring(net, a, b)
    b.answer_invite(cb, 183, net.now, sdp=ANSWER)
    _prack_with(a, UPDATE_OFFER)
    net.run()
    received = one(net.take(b, RequestReceived))
    b.respond(received.rid, 488, net.now)  # type: ignore[attr-defined]
    net.run()
    assert [m.status for m in net.sent("PRACK") if isinstance(m, Response)] == [488]
    b.answer_invite(cb, 200, net.now, sdp=ANSWER)  # not held: the 183 counts as acknowledged
    net.run()
    assert a.call_state(ca) == b.call_state(cb) == "confirmed"
    assert b.sdp(cb) == (ANSWER, OFFER)


def test_an_offer_in_a_prack_while_the_invites_is_unanswered_gets_491() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob", seed=2)
    net = Net(a, b)
    ca, cb = _ring(net, a, b)
    b.answer_invite(cb, 180, net.now)  # reliable, without SDP: the INVITE's offer is unanswered
    _prack_with(a, UPDATE_OFFER)
    net.run()
    assert [m.status for m in net.sent("PRACK") if isinstance(m, Response)] == [491]
    assert net.take(b, RequestReceived) == []
    b.answer_invite(cb, 200, net.now, sdp=ANSWER)
    net.run()
    assert a.call_state(ca) == b.call_state(cb) == "confirmed"


def test_the_callees_early_update_offer_reaches_the_caller_and_its_2xx_repeats_no_answer() -> None:
    net, a, b = _updating_pair()
    ca, cb = _ring(net, a, b)
    b.answer_invite(cb, 183, net.now, sdp=ANSWER)  # the answer, reliably: the callee may offer now
    net.run()
    moved = ANSWER.replace(b"5000", b"5002").replace(b"b 1 1", b"b 1 2")
    b.request_in_call(cb, "UPDATE", net.now, body=moved, content_type="application/sdp")
    net.run()
    received = one(net.take(a, RequestReceived))
    assert received.call == ca and received.request.body == moved  # type: ignore[attr-defined]
    ours = OFFER.replace(b"a 1 1", b"a 1 2") + b"a=sendrecv\r\n"
    a.respond(received.rid, 200, net.now, body=ours, content_type="application/sdp")  # type: ignore[attr-defined]
    net.run()
    assert one(_update_finals(net)).body == ours  # type: ignore[union-attr]
    b.answer_invite(cb, 200, net.now, sdp=moved)
    net.run()
    assert a.call_state(ca) == b.call_state(cb) == "confirmed"
    assert a.sdp(ca) == (ours, moved)
    established = one(net.take(a, CallEstablished))
    assert established.remote_sdp == moved  # type: ignore[attr-defined]


# Forked early dialogs (RFC 3262 §4 with RFC 3261 §12.1.2) ---------------------------------------------


def _as_fork(response: Response, tag: str, *, status: int = 183, rseq: int | None = None,
             body: bytes = b"") -> Response:
    """`response` as another fork of the same INVITE would send it: another To tag."""
    h = response.headers.copy()
    h.set("To", f"<{response.to.uri}>;tag={tag}")
    for name in ("RSeq", "Require", "Content-Type"):
        h.remove(name)
    if rseq is not None:
        h.set("Require", "100rel")
        h.set("RSeq", str(rseq))
    if body:
        h.set("Content-Type", "application/sdp")
    return Response(status, "OK" if status == 200 else "Session Progress", h, body)


def test_each_forks_reliable_1xx_is_pracked_in_its_own_early_dialog_and_its_2xx_keeps_its_answer() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob", seed=2)
    net = Net(a, b)
    ca, cb = _ring(net, a, b)
    b.answer_invite(cb, 183, net.now, sdp=ANSWER)  # fork 1: b itself
    net.run()
    first = one([m for m in net.sent("INVITE") if isinstance(m, Response) and m.status == 183])
    assert isinstance(first, Response)
    other = ANSWER.replace(b"5000", b"6000").replace(b"o=b", b"o=c")
    for rseq in (500, 501, 501):  # fork 2: two reliable 183s, the second one repeated
        a.receive(_as_fork(first, "fork2", rseq=rseq, body=other if rseq == 500 else b"").to_bytes(),
                  net.addr_of(b), net.now)
        net.run()
    pracks = [m for m in net.sent("PRACK") if isinstance(m, Request)]
    by_tag: dict[str, list[Request]] = {}
    for p in pracks:
        by_tag.setdefault(p.to.tag or "", []).append(p)
    assert set(by_tag) == {first.to.tag, "fork2"}
    assert [p.headers.get("RAck") for p in by_tag["fork2"]] == ["500 1 INVITE", "501 1 INVITE"]
    seqs = [p.cseq.seq for p in by_tag["fork2"]]
    assert seqs[1] == seqs[0] + 1  # one early dialog of its own, its CSeq counting on
    # fork 2 answers: the call is that fork's, with the answer its reliable 183 carried
    a.receive(_as_fork(first, "fork2", status=200, body=ANSWER).to_bytes(), net.addr_of(b), net.now)
    net.run(lambda m: isinstance(m, Request) and m.method == "ACK" and m.to.tag == first.to.tag)
    assert a.call_state(ca) == "confirmed"
    assert a.sdp(ca) == (OFFER, other)
    d = a.dialog(ca)
    assert d is not None and d.remote_tag == "fork2"
    a.bye(ca, net.now)
    net.run()
    bye = [m for m in net.sent("BYE") if isinstance(m, Request) and m.to.tag == "fork2"]
    assert bye and bye[0].cseq.seq > seqs[1]  # in order after the PRACKs of that dialog
