"""A REFER outside a dialog answered 401 and sent again with credentials (RFC 3515 §2.4.6,
RFC 3261 §22.2): the referee's NOTIFYs name the retried REFER's CSeq in their Event id, and the
REFER's dialog continues from that CSeq."""

from __future__ import annotations

from tests.unit.sip.test_ua_auth import SERVER_URI, Checker, Pair

from sipmob.sip.ua import ReferNotified, RequestCompleted, RequestReceived
from sipmob.sip.uri import URI, NameAddr


def test_notifies_for_a_challenged_refer_reach_the_referrer() -> None:
    p = Pair(credentials=("alice", "secret"))
    p.server.app_methods.add("REFER")
    checker = Checker()
    op = p.alice.refer_outside(SERVER_URI, NameAddr(None, URI.parse("sip:cn@192.0.2.9")), p.now)
    for _ in range(2):
        e = p.take_server_event()
        assert isinstance(e, RequestReceived)
        if checker.check(e.request, "Authorization", p.now):
            accepted = p.server.accept_refer_outside(e.rid, p.now)  # 202, NOTIFY 100
            refer_seq = e.request.cseq.seq
        else:
            p.server.respond(e.rid, 401, p.now, headers=[("WWW-Authenticate", checker.challenge(p.now))])
        p.run()
    assert refer_seq == 2 and checker.results == ["ok"]
    p.server.notify_refer(accepted, refer_seq, 200, p.now)
    p.run()
    completed = [e for e in p.events if isinstance(e, RequestCompleted)]
    assert [(e.op, e.response.status if e.response else None) for e in completed] == [(op, 202)]
    notified = [(e.status, e.terminated) for e in p.events if isinstance(e, ReferNotified)]
    assert notified == [(100, False), (200, True)]
    # no NOTIFY was refused with 481 on the way
    assert not any(b" 481 " in data.split(b"\r\n", 1)[0] for data in p.sent)
