"""Session timers (RFC 4028) in the UA core: two in-memory UAs with a policy, fake time."""

from __future__ import annotations

from tests.unit.sip.test_ua import ALICE, ANSWER, BOB, OFFER, Net, core, one, raw, uri

from sipmob.sip.message import Request, Response
from sipmob.sip.session_timer import Policy, SessionExpires
from sipmob.sip.ua import ALLOW, CallEstablished, CallTerminated, IncomingInvite, RequestReceived, UACore

SHORT = Policy(interval=90, min_se=90)


def _pair(a_policy: Policy | None = SHORT, b_policy: Policy | None = SHORT, *,
          b_update: bool = True) -> tuple[Net, UACore, UACore]:
    a = core(ALICE, "alice", session_timer=a_policy)
    b = core(BOB, "bob", seed=2, session_timer=b_policy,
             allow=(*ALLOW, "UPDATE") if b_update else ALLOW)
    return Net(a, b), a, b


def _call(net: Net, a: UACore, b: UACore) -> tuple[int, int]:
    ca = a.invite(uri(BOB, "b"), OFFER, net.now)
    net.run()
    inc = one(net.take(b, IncomingInvite))
    b.answer_invite(inc.call, 200, net.now, sdp=ANSWER)  # type: ignore[attr-defined]
    net.run()
    assert a.call_state(ca) == "confirmed"
    return ca, inc.call  # type: ignore[attr-defined]


def _requests(net: Net, method: str) -> list[Request]:
    return [m for m in net.sent(method) if isinstance(m, Request)]


def _finals(net: Net, method: str) -> list[Response]:
    return [m for m in net.sent(method) if isinstance(m, Response) and m.status >= 200]


def _answer_updates(net: Net, b: UACore) -> None:
    """The application's part: 200 to each UPDATE (the core adds the session-timer headers)."""
    for event in net.take(b, RequestReceived):
        b.respond(event.rid, 200, net.now)  # type: ignore[attr-defined]
    net.run()


def test_the_invite_states_timers_and_the_2xx_makes_the_caller_the_refresher() -> None:
    net, a, b = _pair()
    _call(net, a, b)
    invite = _requests(net, "INVITE")[0]
    assert "timer" in ",".join(invite.headers.get_all("Supported"))
    assert invite.headers.get("Session-Expires") == "90" and invite.headers.get("Min-SE") == "90"
    ok = next(m for m in _finals(net, "INVITE") if m.status == 200)
    agreed = SessionExpires.parse(ok.headers.get("Session-Expires") or "")
    assert agreed == SessionExpires.parse("90;refresher=uac")
    assert "timer" in (ok.headers.get("Require") or "")


def test_the_refresher_sends_an_update_at_half_the_interval_and_the_call_lives_on() -> None:
    net, a, b = _pair()
    ca, cb = _call(net, a, b)
    for step in range(1, 61):  # five minutes: refreshes at 45 s, 90 s...
        net.advance(step * 5.0)
        _answer_updates(net, b)
    updates = _requests(net, "UPDATE")
    assert 6 <= len(updates) <= 7, [u.cseq for u in updates]
    assert all(u.body == b"" and "refresher=uac" in (u.headers.get("Session-Expires") or "") for u in updates)
    assert all(r.status == 200 and r.headers.get("Session-Expires") for r in _finals(net, "UPDATE"))
    assert a.call_state(ca) == b.call_state(cb) == "confirmed"
    assert net.take(a, CallTerminated) == net.take(b, CallTerminated) == []


def test_without_update_the_refresh_is_a_reinvite_with_the_same_description() -> None:
    net, a, b = _pair(b_update=False)
    ca, cb = _call(net, a, b)
    net.advance(50.0)
    reinvites = _requests(net, "INVITE")[1:]
    assert len(reinvites) == 1 and reinvites[0].body == OFFER  # unchanged: same o= version
    assert a.call_state(ca) == b.call_state(cb) == "confirmed"


def test_when_the_refreshes_stop_the_other_side_sends_bye_before_the_expiry() -> None:
    net, a, b = _pair()
    ca, cb = _call(net, a, b)

    def drop_updates(m: Request | Response) -> bool:
        return isinstance(m, Request) and m.method == "UPDATE"

    net.advance(59.0, drop_updates)  # §10: the BYE leaves at 90 - min(32, 90/3) = 60 s
    assert _requests(net, "BYE") == [] and b.call_state(cb) == "confirmed"
    net.advance(61.0, drop_updates)
    ended = one(net.take(b, CallTerminated))
    assert ended.reason == "session expired"  # type: ignore[attr-defined]
    # the refresher whose refresh went unanswered gives up at the same moment (§10)
    assert any("bob" in (bye.headers.get("From") or "") for bye in _requests(net, "BYE"))
    assert a.call_state(ca) == "terminated" and b.call_state(cb) == "terminated"


def test_an_interval_below_our_min_se_gets_422_and_the_caller_retries_with_it() -> None:
    net, a, b = _pair(b_policy=Policy(interval=1800, min_se=120))
    ca, cb = _call(net, a, b)
    statuses = [r.status for r in _finals(net, "INVITE")]
    assert statuses[0] == 422 and 200 in statuses
    retry = _requests(net, "INVITE")[-1]
    assert retry.headers.get("Session-Expires") == "120" and retry.cseq.seq == 2
    ok = next(m for m in _finals(net, "INVITE") if m.status == 200)
    assert (ok.headers.get("Session-Expires") or "").startswith("120")


def test_a_peer_without_timers_leaves_the_session_without_expiry() -> None:
    net, a, b = _pair(b_policy=None)
    ca, cb = _call(net, a, b)
    ok = next(m for m in _finals(net, "INVITE") if m.status == 200)
    assert ok.headers.get("Session-Expires") is None
    net.advance(3600.0)
    assert _requests(net, "UPDATE") == [] and a.call_state(ca) == "confirmed"


def test_an_invite_naming_us_the_refresher_is_refreshed_by_us() -> None:
    b = core(BOB, "bob", seed=2, session_timer=SHORT)
    b.receive(raw("INVITE", body=OFFER, ctype="application/sdp",
                  extra=[("Supported", "timer"), ("Session-Expires", "90;refresher=uas"),
                         ("Allow", "INVITE, ACK, BYE, UPDATE")]), ALICE, 0.0)
    inc = b.next_event()
    assert isinstance(inc, IncomingInvite)
    b.messages_to_send()
    b.answer_invite(inc.call, 200, 0.0, sdp=ANSWER)
    (ok,) = [m for d, _ in b.messages_to_send() if (m := _parse(d)) is not None]
    assert ok.headers.get("Session-Expires") == "90;refresher=uas" and ok.headers.get("Require") is None
    b.receive(raw("ACK", to_tag=ok.to.tag), ALICE, 1.0)
    assert isinstance(b.next_event(), CallEstablished)
    b.handle_timer(45.5)
    sent = [_parse(d) for d, _ in b.messages_to_send()]
    assert [m.method for m in sent if isinstance(m, Request)] == ["UPDATE"]


def test_an_update_with_too_small_an_interval_gets_422_with_min_se() -> None:
    net, a, b = _pair(a_policy=None)
    ca, _cb = _call(net, a, b)
    a.request_in_call(ca, "UPDATE", net.now, headers=[("Session-Expires", "30")])
    net.run()
    (final,) = _finals(net, "UPDATE")
    assert final.status == 422 and final.headers.get("Min-SE") == "90"
    assert net.take(b, RequestReceived) == []


def _parse(data: bytes) -> Response | Request:
    from sipmob.sip.message import parse_message

    return parse_message(data)
