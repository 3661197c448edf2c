"""A request within a dialog changes it only once accepted (RFC 3261 §12.2.2): a stranger who knows
a call's Call-ID and tags, refused with 403 by the policy or by the application, must not record
its CSeq 2**31-1 as the peer's and so have the peer's next requests answered 500."""

from __future__ import annotations

from tests.unit.sip.test_ua import ALICE, ANSWER, BOB, OFFER, Net, core, establish, one

from sipmob.sip.dialog import Dialog
from sipmob.sip.message import Response, parse_message
from sipmob.sip.policy import Admission, Refusal
from sipmob.sip.transport import Address
from sipmob.sip.ua import CallTerminated, RequestCompleted, RequestReceived, UACore
from sipmob.sip.uaevents import ReinviteReceived
from sipmob.sip.uri import URI

STRANGER = Address("203.0.113.5", 5060, "udp")
HIGHEST = 2**31 - 1


class _PeerOnly:
    """Within a dialog, only the host of the peer's Contact may speak (the transcoder's rule)."""

    def __init__(self) -> None:
        self.seen: list[Admission] = []

    def admit(self, admission: Admission) -> Refusal | None:
        self.seen.append(admission)
        dialog = admission.dialog
        if dialog is not None and admission.source.host != dialog.remote_target.host:
            return Refusal(403, "Not The Peer")
        return None


def _forged(d: Dialog, method: str, seq: int = HIGHEST, body: bytes = b"x",
            content_type: str = "text/plain", contact: str | None = None) -> bytes:
    """What a stranger who read the dialog's identifiers sends as its peer, from its own host."""
    request = d.create_request(method, cseq=seq, body=body, content_type=content_type)
    data = request.to_bytes()
    line, rest = data.split(b"\r\n", 1)
    via = f"Via: SIP/2.0/UDP {STRANGER.host}:{STRANGER.port};branch=z9hG4bKforged{method}{seq};rport\r\n"
    if contact is not None:
        rest = rest.replace(f"Contact: {d.local_contact}".encode(), f"Contact: {contact}".encode())
    return line + b"\r\n" + via.encode() + rest


def _answers(ua: UACore, data: bytes, now: float) -> list[int]:
    ua.receive(data, STRANGER, now)
    return [m.status for d, _ in ua.messages_to_send() if isinstance(m := parse_message(d), Response)]


def _peer_info_reaches(net: Net, a: UACore, b: UACore, ca: int) -> RequestReceived:
    a.request_in_call(ca, "INFO", net.now, body=b"x", content_type="text/plain")
    net.run()
    rx = one(net.take(b, RequestReceived))
    assert isinstance(rx, RequestReceived)
    return rx


def test_a_strangers_in_dialog_requests_refused_by_the_policy_leave_the_dialog_as_it_was() -> None:
    policy = _PeerOnly()
    a, b = core(ALICE, "alice"), core(BOB, "bob", policy=policy)
    b.app_methods.add("UPDATE")
    net = Net(a, b)
    ca, cb = establish(net, a, b)
    theirs, ours = a.dialog(ca), b.dialog(cb)
    assert theirs is not None and ours is not None
    seq, target, routes = ours.remote_seq, ours.remote_target, list(ours.route_set)
    net.take(b)
    for method, body, ctype in (("INFO", b"x", "text/plain"), ("INVITE", OFFER, "application/sdp"),
                                ("UPDATE", b"", "text/plain"), ("BYE", b"", "text/plain")):
        forged = _forged(theirs, method, body=body, content_type=ctype, contact="<sip:mallory@203.0.113.5>")
        assert _answers(b, forged, net.now) == [403], method
        assert (ours.remote_seq, ours.remote_target, ours.route_set) == (seq, target, routes), method
    assert b.call_state(cb) == "confirmed" and net.take(b) == []
    assert policy.seen[-1].dialog is ours
    # the peer goes on with its own numbering: accepted, not 500
    rx = _peer_info_reaches(net, a, b, ca)
    b.respond(rx.rid, 200, net.now)
    net.run()
    done = one(net.take(a, RequestCompleted))
    assert isinstance(done, RequestCompleted) and done.response.status == 200
    a.reinvite(ca, OFFER, net.now)
    net.run()
    assert isinstance(one(net.take(b, ReinviteReceived)), ReinviteReceived)


def test_a_strangers_request_the_application_refuses_records_no_cseq_and_no_target() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob")
    b.app_methods.add("UPDATE")
    net = Net(a, b)
    ca, cb = establish(net, a, b)
    theirs, ours = a.dialog(ca), b.dialog(cb)
    assert theirs is not None and ours is not None
    seq, target = ours.remote_seq, ours.remote_target
    for method in ("INFO", "UPDATE"):
        b.receive(_forged(theirs, method, contact="<sip:mallory@203.0.113.5>"), STRANGER, net.now)
        rx = one(net.take(b, RequestReceived))
        assert isinstance(rx, RequestReceived)
        b.respond(rx.rid, 403, net.now)  # the application's own check: not the peer's host
        assert (ours.remote_seq, ours.remote_target) == (seq, target), method
    b.messages_to_send()
    rx = _peer_info_reaches(net, a, b, ca)
    b.respond(rx.rid, 200, net.now)
    assert ours.remote_seq == theirs.local_seq  # accepted: recorded by its answer


def test_an_update_accepted_by_the_application_refreshes_the_target_and_a_lower_cseq_gets_500() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob")
    b.app_methods.add("UPDATE")
    net = Net(a, b)
    ca, cb = establish(net, a, b)
    theirs, ours = a.dialog(ca), b.dialog(cb)
    assert theirs is not None and ours is not None
    b.receive(_forged(theirs, "UPDATE", seq=10, contact="<sip:alice@127.0.0.9:5070>"), ALICE, net.now)
    rx = one(net.take(b, RequestReceived))
    assert isinstance(rx, RequestReceived)
    b.respond(rx.rid, 200, net.now)
    assert ours.remote_seq == 10 and ours.remote_target == URI.parse("sip:alice@127.0.0.9:5070")
    b.messages_to_send()
    assert _answers(b, _forged(theirs, "INFO", seq=9), net.now) == [500]  # §12.2.2 still holds


def test_the_peers_own_highest_cseq_is_accepted_and_our_requests_go_on() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob")
    net = Net(a, b)
    ca, cb = establish(net, a, b)
    theirs, ours = a.dialog(ca), b.dialog(cb)
    assert theirs is not None and ours is not None
    theirs.local_seq = HIGHEST - 1  # its next request carries the highest legal number
    rx = _peer_info_reaches(net, a, b, ca)
    b.respond(rx.rid, 200, net.now)
    net.run()
    assert ours.remote_seq == HIGHEST
    one(net.take(a, RequestCompleted))
    local = ours.local_seq
    b.request_in_call(cb, "INFO", net.now, body=b"y", content_type="text/plain")  # our numbering is ours
    net.run()
    rx = one(net.take(a, RequestReceived))
    assert isinstance(rx, RequestReceived) and rx.request.cseq.seq == local + 1
    a.respond(rx.rid, 200, net.now)
    net.run()
    done = one(net.take(b, RequestCompleted))
    assert isinstance(done, RequestCompleted) and done.response.status == 200
    b.bye(cb, net.now)
    net.run()
    assert one(net.take(a, CallTerminated)) == CallTerminated(ca, "bye")


def test_two_requests_answered_in_reverse_order_keep_the_highest_cseq() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob")
    net = Net(a, b)
    ca, cb = establish(net, a, b)
    ours = b.dialog(cb)
    assert ours is not None
    a.request_in_call(ca, "INFO", net.now, body=b"1", content_type="text/plain")
    a.request_in_call(ca, "INFO", net.now, body=b"2", content_type="text/plain")
    net.run()
    first, second = net.take(b, RequestReceived)
    assert isinstance(first, RequestReceived) and isinstance(second, RequestReceived)
    b.respond(second.rid, 200, net.now)
    b.respond(first.rid, 200, net.now)
    assert ours.remote_seq == second.request.cseq.seq


def test_a_reinvite_refused_by_the_application_with_4xx_is_not_recorded() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob")
    net = Net(a, b)
    ca, cb = establish(net, a, b)
    ours = b.dialog(cb)
    assert ours is not None
    seq = ours.remote_seq
    a.reinvite(ca, OFFER, net.now)
    net.run()
    rx = one(net.take(b, ReinviteReceived))
    assert isinstance(rx, ReinviteReceived)
    b.answer_reinvite(cb, rx.rid, 488, net.now)
    assert ours.remote_seq == seq
    net.run()
    a.reinvite(ca, OFFER, net.now)
    net.run()
    rx = one(net.take(b, ReinviteReceived))
    assert isinstance(rx, ReinviteReceived)
    b.answer_reinvite(cb, rx.rid, 200, net.now, sdp=ANSWER)
    assert ours.remote_seq == rx.request.cseq.seq


def test_a_prack_or_refer_notify_naming_nothing_of_ours_gets_481_and_records_nothing() -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob")
    net = Net(a, b)
    ca, cb = establish(net, a, b)
    theirs, ours = a.dialog(ca), b.dialog(cb)
    assert theirs is not None and ours is not None
    seq = ours.remote_seq
    prack = _forged(theirs, "PRACK", body=b"", contact=None)
    prack = prack.replace(b"\r\nCSeq:", b"\r\nRAck: 1 1 INVITE\r\nCSeq:", 1)
    assert _answers(b, prack, net.now) == [481]
    notify = _forged(theirs, "NOTIFY", body=b"SIP/2.0 200 OK\r\n", content_type="message/sipfrag")
    notify = notify.replace(b"\r\nCSeq:", b"\r\nEvent: refer;id=999\r\nCSeq:", 1)
    assert _answers(b, notify, net.now) == [481]
    assert ours.remote_seq == seq
    rx = _peer_info_reaches(net, a, b, ca)
    assert rx.request.cseq.seq == theirs.local_seq


class _Recording:
    def __init__(self) -> None:
        self.seen: list[Admission] = []

    def admit(self, admission: Admission) -> Refusal | None:
        self.seen.append(admission)
        return None


def test_the_policy_hears_where_each_sides_dialog_forming_request_came_from_or_went_to() -> None:
    """`Admission.peer`: the INVITE's source for the side that answered it, its destination for
    the side that sent it (what a policy checks a peer behind a NAT by, its Contact aside)."""
    pa, pb = _Recording(), _Recording()
    a, b = core(ALICE, "alice", policy=pa), core(BOB, "bob", policy=pb)
    net = Net(a, b)
    ca, cb = establish(net, a, b)
    _peer_info_reaches(net, a, b, ca)
    assert pb.seen[-1].dialog is b.dialog(cb) and pb.seen[-1].peer == ALICE.host
    b.request_in_call(cb, "INFO", net.now, body=b"x", content_type="text/plain")
    net.run()
    assert pa.seen[-1].dialog is a.dialog(ca) and pa.seen[-1].peer == BOB.host
    b.receive(_forged(a.dialog(ca), "INFO", seq=50), STRANGER, net.now)  # type: ignore[arg-type]
    assert pb.seen[-1].source == STRANGER and pb.seen[-1].peer == ALICE.host
