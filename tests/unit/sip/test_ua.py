"""The UA core (RFC 3261 §12-§15, RFC 3515, 3891): two in-memory UAs wired back to back, fake time."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipmob.sip.headers import Replaces
from sipmob.sip.message import Headers, Request, Response, parse_message
from sipmob.sip.transaction import TimerConfig, make_cancel
from sipmob.sip.transport import Address
from sipmob.sip.ua import (
    CallEstablished,
    CallFailed,
    CallProgress,
    CallTerminated,
    IncomingInvite,
    ReferNotified,
    ReinviteCompleted,
    ReinviteReceived,
    RequestCompleted,
    RequestReceived,
    UACore,
    UAError,
    referred,
    referred_request,
)
from sipmob.sip.uri import URI, NameAddr

ALICE = Address("127.0.0.1", 5070, "udp")
BOB = Address("127.0.0.1", 5080, "udp")
CAROL = Address("127.0.0.1", 5090, "udp")
SESSION = b"s=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
OFFER = b"v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\n" + SESSION + b"m=audio 4000 RTP/AVP 0\r\n"
ANSWER = b"v=0\r\no=b 1 1 IN IP4 127.0.0.1\r\n" + SESSION + b"m=audio 5000 RTP/AVP 0\r\n"
T1 = 0.5


def core(addr: Address, name: str, seed: int = 1, **kw: object) -> UACore:
    counter = itertools.count()
    return UACore([addr], user=name, token=lambda: f"{name}{next(counter)}", rng=random.Random(seed),
                  timers=TimerConfig(t1=T1), **kw)  # type: ignore[arg-type]


class Net:
    """Several cores on one fake network and one fake clock (aioquic's transfer/drop style)."""

    def __init__(self, *cores: UACore) -> None:
        self.by_addr = {c.layer._local["udp"]: c for c in cores}
        self.now = 0.0
        self.wire: list[tuple[Address, Address, bytes]] = []  # (from, to, data) of everything moved
        self.events: dict[int, list[object]] = {id(c): [] for c in cores}

    def addr_of(self, ua: UACore) -> Address:
        return next(a for a, c in self.by_addr.items() if c is ua)

    def step(self, drop: object = None) -> int:
        """Deliver every queued message once; `drop(msg)` True loses it. Returns how many moved."""
        moved = 0
        for src, ua in list(self.by_addr.items()):
            for data, dest in ua.messages_to_send():
                msg = parse_message(data)
                self.wire.append((src, dest, data))
                if drop is not None and drop(msg):  # type: ignore[operator]
                    continue
                peer = self.by_addr.get(Address(dest.host, dest.port, "udp"))
                if peer is not None:
                    peer.receive(data, src, self.now)
                    moved += 1
        self.collect()
        return moved

    def run(self, drop: object = None) -> None:
        for _ in range(50):
            if not self.step(drop):
                return

    def collect(self) -> None:
        for ua in self.by_addr.values():
            while (event := ua.next_event()) is not None:
                self.events[id(ua)].append(event)

    def advance(self, until: float, drop: object = None) -> None:
        """Fire every timer due up to `until`, delivering what they send."""
        for _ in range(10000):
            due = [t for ua in self.by_addr.values() if (t := ua.get_timer()) is not None and t <= until]
            if not due:
                break
            self.now = min(due)
            for ua in self.by_addr.values():
                ua.handle_timer(self.now)
            self.run(drop)
        self.now = until

    def take(self, ua: UACore, kind: type | None = None) -> list[object]:
        self.collect()
        out = [e for e in self.events[id(ua)] if kind is None or isinstance(e, kind)]
        self.events[id(ua)] = [e for e in self.events[id(ua)] if e not in out]
        return out

    def sent(self, kind: str) -> list[Request | Response]:
        """Messages on the wire whose method (request) or CSeq method (response) is `kind`."""
        out = []
        for _, _, data in self.wire:
            m = parse_message(data)
            if (m.method if isinstance(m, Request) else m.cseq.method) == kind:
                out.append(m)
        return out


def uri(addr: Address, user: str) -> URI:
    return URI.parse(f"sip:{user}@{addr.host}:{addr.port}")


def one(items: list[object]) -> object:
    assert len(items) == 1, items
    return items[0]


def establish(net: Net, a: UACore, b: UACore, sdp: bytes | None = OFFER, **kw: object) -> tuple[int, int]:
    call = a.invite(uri(net.addr_of(b), "b"), sdp, net.now, **kw)  # type: ignore[arg-type]
    net.run()
    inc = one(net.take(b, IncomingInvite))
    assert isinstance(inc, IncomingInvite)
    b.answer_invite(inc.call, 200, net.now, sdp=ANSWER)
    net.run()
    return call, inc.call


Pair = tuple[Net, UACore, UACore]


@pytest.fixture
def pair() -> Pair:
    a, b = core(ALICE, "alice"), core(BOB, "bob", seed=2)
    return Net(a, b), a, b


# Basic calls --------------------------------------------------------------------------------------


def test_call_is_established_on_both_sides_with_offer_and_answer(pair: Pair) -> None:
    net, a, b = pair
    ca, cb = establish(net, a, b)
    assert [type(e) for e in net.take(a)] == [CallEstablished]
    assert one(net.take(b, CallEstablished)) == CallEstablished(cb, OFFER)
    assert a.sdp(ca) == (OFFER, ANSWER) and b.sdp(cb) == (ANSWER, OFFER)
    assert a.call_state(ca) == b.call_state(cb) == "confirmed"
    assert a.dialog(ca).id.call_id == b.dialog(cb).id.call_id  # type: ignore[union-attr]


def test_call_in_the_other_direction(pair: Pair) -> None:
    net, a, b = pair
    cb, ca = establish(net, b, a)
    assert a.call_state(ca) == b.call_state(cb) == "confirmed"


def test_ringing_reaches_the_caller_as_progress_and_makes_an_early_dialog(pair: Pair) -> None:
    net, a, b = pair
    ca = a.invite(uri(BOB, "b"), OFFER, 0.0)
    net.run()
    inc = one(net.take(b, IncomingInvite))
    b.answer_invite(inc.call, 180, net.now)  # type: ignore[attr-defined]
    net.run()
    progress = one(net.take(a, CallProgress))
    assert progress.response.status == 180  # type: ignore[attr-defined]
    assert a.call_state(ca) == "early" and a.dialog(ca).state.value == "early"  # type: ignore[union-attr]


def test_rejected_call_fails_with_the_status_and_leaves_nothing(pair: Pair) -> None:
    net, a, b = pair
    ca = a.invite(uri(BOB, "b"), OFFER, 0.0)
    net.run()
    inc = one(net.take(b, IncomingInvite))
    b.answer_invite(inc.call, 486, net.now)  # type: ignore[attr-defined]
    net.run()
    assert one(net.take(a, CallFailed)) == CallFailed(ca, 486, "Busy Here")
    assert len(a) == len(b) == 0


def test_invite_to_nobody_fails_with_408_after_timer_b(pair: Pair) -> None:
    net, a, _ = pair
    ca = a.invite(uri(CAROL, "c"), OFFER, 0.0)
    net.advance(64 * T1 + 1)
    assert one(net.take(a, CallFailed)) == CallFailed(ca, 408, "Request Timeout")
    assert len(a) == 0


def test_bye_ends_the_call_on_both_sides(pair: Pair) -> None:
    net, a, b = pair
    ca, cb = establish(net, a, b)
    net.take(a), net.take(b)
    op = b.bye(cb, net.now)
    net.run()
    assert one(net.take(a, CallTerminated)) == CallTerminated(ca, "bye")
    assert one(net.take(b, CallTerminated)) == CallTerminated(cb, "local")
    assert one(net.take(b, RequestCompleted)).op == op  # type: ignore[attr-defined]
    assert len(a) == len(b) == 0


# Late offer, lost ACK ----------------------------------------------------------------------------


def test_late_offer_puts_the_offer_in_the_2xx_and_the_answer_in_the_ack(pair: Pair) -> None:
    net, a, b = pair
    ca = a.invite(uri(BOB, "b"), None, 0.0, answer_for=lambda offer: ANSWER if offer == OFFER else b"")
    net.run()
    inc = one(net.take(b, IncomingInvite))
    assert inc.offer is None  # type: ignore[attr-defined]
    b.answer_invite(inc.call, 200, net.now, sdp=OFFER)  # type: ignore[attr-defined]
    net.run()
    ack = one(net.sent("ACK"))
    assert ack.body == ANSWER and ack.content_type == "application/sdp"  # type: ignore[union-attr]
    assert one(net.take(b, CallEstablished)).remote_sdp == ANSWER  # type: ignore[attr-defined]
    assert a.sdp(ca) == (ANSWER, OFFER)


def test_late_offer_without_answer_function_holds_the_ack_until_the_app_gives_the_answer(
        pair: Pair) -> None:
    net, a, b = pair
    ca = a.invite(uri(BOB, "b"), None, 0.0)
    net.run()
    inc = one(net.take(b, IncomingInvite))
    b.answer_invite(inc.call, 200, net.now, sdp=OFFER)  # type: ignore[attr-defined]
    net.run()
    assert one(net.take(a, CallEstablished)) == CallEstablished(ca, OFFER)
    assert net.sent("ACK") == [] and a.ack_pending(ca)
    net.advance(net.now + 1.6)  # the 2xx is retransmitted meanwhile, and not ACKed
    assert net.sent("ACK") == []
    a.ack(ca, ANSWER, net.now)
    net.run()
    assert one(net.sent("ACK")).body == ANSWER  # type: ignore[union-attr]
    assert one(net.take(b, CallEstablished)) == CallEstablished(inc.call, ANSWER)  # type: ignore[attr-defined]
    assert not a.ack_pending(ca)


def test_lost_ack_makes_the_uas_retransmit_its_2xx_until_the_ack_arrives(pair: Pair) -> None:
    net, a, b = pair
    a.invite(uri(BOB, "b"), OFFER, 0.0)
    net.run()
    inc = one(net.take(b, IncomingInvite))
    b.answer_invite(inc.call, 200, net.now, sdp=ANSWER)  # type: ignore[attr-defined]
    acks_lost = [0]

    def lose_two_acks(msg: Request | Response) -> bool:
        if isinstance(msg, Request) and msg.method == "ACK" and acks_lost[0] < 2:
            acks_lost[0] += 1
            return True
        return False

    net.run(lose_two_acks)
    net.advance(10.0, lose_two_acks)
    oks = [m for m in net.sent("INVITE") if isinstance(m, Response) and m.status == 200]
    assert len(oks) == 3  # the first and one per lost ACK
    assert one(net.take(b, CallEstablished))
    assert b.call_state(inc.call) == "confirmed"  # type: ignore[attr-defined]


def test_no_ack_at_all_ends_the_call_with_bye_after_64_t1(pair: Pair) -> None:
    net, a, b = pair
    ca = a.invite(uri(BOB, "b"), OFFER, 0.0)
    net.run()
    inc = one(net.take(b, IncomingInvite))
    b.answer_invite(inc.call, 200, net.now, sdp=ANSWER)  # type: ignore[attr-defined]

    def no_acks(msg: Request | Response) -> bool:
        return isinstance(msg, Request) and msg.method == "ACK"

    net.advance(64 * T1 + 5, no_acks)
    assert one(net.take(b, CallTerminated)) == CallTerminated(inc.call, "no-ack")  # type: ignore[attr-defined]
    assert one(net.take(a, CallTerminated)) == CallTerminated(ca, "bye")
    assert len(a) == len(b) == 0


# CANCEL -------------------------------------------------------------------------------------------


def test_cancel_after_ringing_gets_487_and_ends_the_call_on_both_sides(pair: Pair) -> None:
    net, a, b = pair
    ca = a.invite(uri(BOB, "b"), OFFER, 0.0)
    net.run()
    inc = one(net.take(b, IncomingInvite))
    b.answer_invite(inc.call, 180, net.now)  # type: ignore[attr-defined]
    net.run()
    a.cancel(ca, net.now)
    net.run()
    assert one(net.take(a, CallFailed)) == CallFailed(ca, 487, "Request Terminated")
    assert one(net.take(b, CallFailed)) == CallFailed(inc.call, 487, "Request Terminated")  # type: ignore[attr-defined]
    assert [m.status for m in net.sent("CANCEL") if isinstance(m, Response)] == [200]
    assert len(a) == len(b) == 0


def test_cancel_before_any_response_waits_for_the_provisional(pair: Pair) -> None:
    net, a, b = pair
    ca = a.invite(uri(BOB, "b"), OFFER, 0.0)
    a.cancel(ca, 0.0)
    net.run()
    assert net.sent("CANCEL") == []  # §9.1: not before a provisional response
    net.advance(0.3)  # the INVITE server transaction's 100 Trying
    assert [m.method for m in net.sent("CANCEL") if isinstance(m, Request)] == ["CANCEL"]
    assert one(net.take(a, CallFailed)) == CallFailed(ca, 487, "Request Terminated")


def test_2xx_racing_the_cancel_is_acked_and_the_call_ended_with_bye(pair: Pair) -> None:
    net, a, b = pair
    ca = a.invite(uri(BOB, "b"), OFFER, 0.0)
    net.run()
    inc = one(net.take(b, IncomingInvite))
    b.answer_invite(inc.call, 180, net.now)  # type: ignore[attr-defined]
    net.run()
    a.cancel(ca, net.now)  # the CANCEL is queued on a's side...
    # ...and the 200 on b's
    b.answer_invite(inc.call, 200, net.now, sdp=ANSWER)  # type: ignore[attr-defined]
    net.run()
    assert one(net.take(a, CallFailed)) == CallFailed(ca, 487, "Request Terminated")
    assert len(net.sent("ACK")) == 1
    assert [m.method for m in net.sent("BYE") if isinstance(m, Request)] == ["BYE"]
    assert len(a) == len(b) == 0


# re-INVITE and glare ------------------------------------------------------------------------------


def test_reinvite_changes_the_session_on_both_sides(pair: Pair) -> None:
    net, a, b = pair
    ca, cb = establish(net, a, b)
    new_offer = OFFER.replace(b"4000", b"4002")
    op = a.reinvite(ca, new_offer, net.now)
    net.run()
    rx = one(net.take(b, ReinviteReceived))
    assert rx.offer == new_offer  # type: ignore[attr-defined]
    b.answer_reinvite(cb, rx.rid, 200, net.now, sdp=ANSWER)  # type: ignore[attr-defined]
    net.run()
    done = one(net.take(a, ReinviteCompleted))
    assert done.op == op and done.response.status == 200  # type: ignore[attr-defined]
    assert b.sdp(cb) == (ANSWER, new_offer) and a.sdp(ca)[0] == new_offer
    assert len(net.sent("ACK")) == 2


def test_reinvite_without_sdp_gets_the_offer_in_2xx_and_answers_in_ack(pair: Pair) -> None:
    net, a, b = pair
    ca, cb = establish(net, a, b)
    a.reinvite(ca, None, net.now, answer_for=lambda offer: ANSWER)
    net.run()
    rx = one(net.take(b, ReinviteReceived))
    assert rx.offer is None  # type: ignore[attr-defined]
    b.answer_reinvite(cb, rx.rid, 200, net.now, sdp=OFFER)  # type: ignore[attr-defined]
    net.run()
    assert net.sent("ACK")[-1].body == ANSWER
    assert b.sdp(cb) == (OFFER, ANSWER)


def test_rejected_reinvite_keeps_the_call(pair: Pair) -> None:
    net, a, b = pair
    ca, cb = establish(net, a, b)
    a.reinvite(ca, OFFER, net.now)
    net.run()
    rx = one(net.take(b, ReinviteReceived))
    b.answer_reinvite(cb, rx.rid, 488, net.now)  # type: ignore[attr-defined]
    net.run()
    assert one(net.take(a, ReinviteCompleted)).response.status == 488  # type: ignore[attr-defined]
    assert a.call_state(ca) == b.call_state(cb) == "confirmed"


def test_glare_gets_491_on_both_sides_and_the_retries_follow_the_back_off(pair: Pair) -> None:
    net, a, b = pair
    ca, cb = establish(net, a, b)  # a owns the Call-ID
    a.reinvite(ca, OFFER, net.now)
    b.reinvite(cb, ANSWER, net.now)
    net.run()
    start = net.now
    glare = [m for m in net.sent("INVITE") if isinstance(m, Response) and m.status == 491]
    assert len(glare) == 2
    assert net.take(a, ReinviteReceived) == [] and net.take(b, ReinviteReceived) == []
    # b (not the owner) retries within 0-2 s; a (the owner) only after 2.1 s: b's wins
    net.advance(start + 2.05)
    rx = one(net.take(a, ReinviteReceived))
    a.answer_reinvite(ca, rx.rid, 200, net.now, sdp=OFFER)  # type: ignore[attr-defined]
    net.run()
    assert one(net.take(b, ReinviteCompleted)).response.status == 200  # type: ignore[attr-defined]
    net.advance(start + 4.01)
    rx = one(net.take(b, ReinviteReceived))
    b.answer_reinvite(cb, rx.rid, 200, net.now, sdp=ANSWER)  # type: ignore[attr-defined]
    net.run()
    assert one(net.take(a, ReinviteCompleted)).response.status == 200  # type: ignore[attr-defined]


def test_reinvite_while_ours_is_pending_is_answered_491(pair: Pair) -> None:
    net, a, b = pair
    ca, cb = establish(net, a, b)
    a.reinvite(ca, OFFER, net.now)
    net.run()
    one(net.take(b, ReinviteReceived))
    b.reinvite(cb, ANSWER, net.now)
    net.run()
    assert [m.status for m in net.sent("INVITE") if isinstance(m, Response)][-1] == 491


def test_cancelled_reinvite_gets_487_and_the_call_stays(pair: Pair) -> None:
    net, a, b = pair
    ca, cb = establish(net, a, b)
    a.reinvite(ca, OFFER, net.now)
    (data, _), = a.messages_to_send()
    b.receive(data, ALICE, net.now)
    one(net.take(b, ReinviteReceived))
    reinvite = parse_message(data)
    assert isinstance(reinvite, Request)
    b.receive(make_cancel(reinvite).to_bytes(), ALICE, net.now)
    statuses = [(m.cseq.method, m.status) for m in (parse_message(d) for d, _ in b.messages_to_send())
                if isinstance(m, Response)]
    assert statuses == [("CANCEL", 200), ("INVITE", 487)]
    assert b.call_state(cb) == "confirmed"


def test_second_reinvite_from_the_app_while_one_is_pending_is_refused(pair: Pair) -> None:
    net, a, b = pair
    ca, _ = establish(net, a, b)
    a.reinvite(ca, OFFER, net.now)
    with pytest.raises(UAError):
        a.reinvite(ca, OFFER, net.now)


# REFER and NOTIFY --------------------------------------------------------------------------------


def test_refer_202_then_notifies_100_and_200_end_the_subscription(pair: Pair) -> None:
    net, a, b = pair
    ca, cb = establish(net, a, b)
    op = a.refer(ca, NameAddr(None, uri(CAROL, "carol")), net.now,
                 referred_by=NameAddr(None, URI.parse("sip:alice@127.0.0.1")))
    net.run()
    rx = one(net.take(b, RequestReceived))
    assert rx.request.method == "REFER"  # type: ignore[attr-defined]
    assert rx.request.headers.get("Referred-By") == "sip:alice@127.0.0.1"  # type: ignore[attr-defined]
    refer_id = b.accept_refer(cb, rx.rid, net.now)  # type: ignore[attr-defined]
    net.run()
    assert one(net.take(a, RequestCompleted)) == RequestCompleted(op, net.sent("REFER")[-1])  # type: ignore[arg-type]
    assert one(net.take(a, ReferNotified)) == ReferNotified(ca, op, 100, "Trying", False)
    b.notify_refer(cb, refer_id, 200, net.now)
    net.run()
    assert one(net.take(a, ReferNotified)) == ReferNotified(ca, op, 200, "OK", True)
    notifies = [m for m in net.sent("NOTIFY") if isinstance(m, Request)]
    assert [m.headers.get("Event") for m in notifies] == [f"refer;id={refer_id}"] * 2
    assert notifies[0].headers.get("Subscription-State") == "active;expires=60"
    assert notifies[1].headers.get("Subscription-State", ) == "terminated;reason=noresource"
    assert notifies[1].content_type == "message/sipfrag" and notifies[1].body == b"SIP/2.0 200 OK\r\n"


def test_notify_for_an_unknown_refer_subscription_gets_481(pair: Pair) -> None:
    net, a, b = pair
    ca, cb = establish(net, a, b)
    b.request_in_call(cb, "NOTIFY", net.now, headers=[("Event", "refer;id=99"),
                      ("Subscription-State", "active")], body=b"SIP/2.0 100 Trying\r\n",
                      content_type="message/sipfrag")
    net.run()
    assert [m.status for m in net.sent("NOTIFY") if isinstance(m, Response)] == [481]


def test_invite_with_replaces_terminates_the_replaced_dialog_with_bye() -> None:
    a, b, c = core(ALICE, "alice"), core(BOB, "bob"), core(CAROL, "carol")
    net = Net(a, b, c)
    ca, cb = establish(net, a, b)
    d = a.dialog(ca)
    assert d is not None
    # carol replaces alice in bob's call: Replaces names bob's dialog from bob's point of view
    replaces = Replaces(d.call_id, to_tag=d.remote_tag, from_tag=d.local_tag)
    cc = c.invite(uri(BOB, "b"), OFFER, net.now, headers=[("Replaces", str(replaces)),
                                                          ("Referred-By", "<sip:alice@127.0.0.1>")])
    net.run()
    inc = one(net.take(b, IncomingInvite))
    assert inc.replaces == replaces and inc.replaces_call == cb  # type: ignore[attr-defined]
    assert str(inc.referred_by.uri) == "sip:alice@127.0.0.1"  # type: ignore[attr-defined]
    b.answer_invite(inc.call, 200, net.now, sdp=ANSWER)  # type: ignore[attr-defined]
    net.run()
    assert one(net.take(b, CallTerminated)) == CallTerminated(cb, "replaced")
    assert one(net.take(a, CallTerminated)) == CallTerminated(ca, "bye")
    assert c.call_state(cc) == "confirmed" and len(b) == 1


def test_invite_with_replaces_for_no_dialog_gets_481(pair: Pair) -> None:
    net, a, b = pair
    ca = a.invite(uri(BOB, "b"), OFFER, 0.0, headers=[("Replaces", "nope@x;to-tag=1;from-tag=2")])
    net.run()
    assert one(net.take(a, CallFailed)) == CallFailed(ca, 481, "Call/Transaction Does Not Exist")
    assert net.take(b, IncomingInvite) == []


# UAS checks ---------------------------------------------------------------------------------------


def raw(method: str, *, to_tag: str | None = None, seq: int = 1, call_id: str = "x1",
        extra: list[tuple[str, str]] | None = None, body: bytes = b"", ctype: str | None = None) -> bytes:
    to = "<sip:bob@127.0.0.1:5080>" + (f";tag={to_tag}" if to_tag else "")
    h = Headers([("Via", f"SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKraw{method}{seq}"),
                 ("Max-Forwards", "70"), ("From", "<sip:alice@127.0.0.1>;tag=a1"), ("To", to),
                 ("Call-ID", call_id), ("CSeq", f"{seq} {method}"),
                 ("Contact", "<sip:alice@127.0.0.1:5070>"), *(extra or [])])
    if ctype:
        h.add("Content-Type", ctype)
    return Request(method, URI.parse("sip:bob@127.0.0.1:5080"), h, body).to_bytes()


def answers(b: UACore, data: bytes) -> list[Response]:
    b.receive(data, ALICE, 0.0)
    out = [parse_message(d) for d, _ in b.messages_to_send()]
    return [m for m in out if isinstance(m, Response)]


@pytest.mark.parametrize("method", ["BYE", "INFO", "REFER", "NOTIFY", "INVITE"])
def test_request_for_an_unknown_dialog_gets_481(method: str) -> None:
    b = core(BOB, "bob")
    assert [r.status for r in answers(b, raw(method, to_tag="gone"))] == [481]


def test_in_dialog_request_with_a_lower_cseq_gets_500(pair: Pair) -> None:
    net, a, b = pair
    ca, cb = establish(net, a, b)
    d = a.dialog(ca)
    assert d is not None
    d.local_seq = 10
    a.request_in_call(ca, "INFO", net.now, body=b"x", content_type="text/plain")
    net.run()
    one(net.take(b, RequestReceived))
    d.local_seq = 4
    a.request_in_call(ca, "INFO", net.now, body=b"y", content_type="text/plain")
    net.run()
    assert [m.status for m in net.sent("INFO") if isinstance(m, Response)] == [500]
    assert net.take(b, RequestReceived) == []


def test_unknown_method_gets_405_with_allow() -> None:
    b = core(BOB, "bob")
    (resp,) = answers(b, raw("PUBLISH"))
    assert resp.status == 405 and "INVITE" in (resp.headers.get_all("Allow") or [])


def test_invite_with_a_body_that_is_not_sdp_gets_415() -> None:
    b = core(BOB, "bob")
    statuses = [r.status for r in answers(b, raw("INVITE", body=b"<x/>", ctype="application/xml"))]
    assert statuses == [415]


def test_require_of_an_unknown_extension_gets_420_with_unsupported() -> None:
    b = core(BOB, "bob")
    (resp,) = answers(b, raw("INVITE", extra=[("Require", "precondition, replaces")]))
    assert resp.status == 420 and resp.headers.get("Unsupported") == "precondition"


def test_require_100rel_gets_420_only_from_a_ua_that_does_not_take_prack() -> None:
    b = core(BOB, "bob", allow=("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"))
    (resp,) = answers(b, raw("INVITE", extra=[("Require", "100rel")]))
    assert resp.status == 420 and resp.headers.get("Unsupported") == "100rel"
    full = core(BOB, "bob")
    full.receive(raw("INVITE", extra=[("Require", "100rel")]), ALICE, 0.0)
    assert isinstance(full.next_event(), IncomingInvite)


def test_options_answered_with_allow_accept_supported_and_capabilities() -> None:
    b = core(BOB, "bob", capabilities_sdp=lambda: ANSWER)
    (resp,) = answers(b, raw("OPTIONS"))
    assert resp.status == 200 and resp.body == ANSWER
    assert "REFER" in resp.headers.get_all("Allow") and "replaces" in resp.headers.get_all("Supported")
    assert "application/sdp" in resp.headers.get_all("Accept")


def test_options_between_two_cores_completes_with_200(pair: Pair) -> None:
    net, a, _ = pair
    op = a.request("OPTIONS", uri(BOB, "b"), 0.0)
    net.run()
    done = one(net.take(a, RequestCompleted))
    assert done.op == op and done.response.status == 200  # type: ignore[attr-defined]


def test_out_of_dialog_method_the_app_asked_for_is_delivered_and_answered(pair: Pair) -> None:
    net, a, b = pair
    b.app_methods.add("MESSAGE")
    a.request("MESSAGE", uri(BOB, "b"), 0.0, body=b"hi", content_type="text/plain")
    net.run()
    rx = one(net.take(b, RequestReceived))
    b.respond(rx.rid, 202, net.now)  # type: ignore[attr-defined]
    net.run()
    assert one(net.take(a, RequestCompleted)).response.status == 202  # type: ignore[attr-defined]


def test_garbage_and_malformed_headers_never_raise() -> None:
    b = core(BOB, "bob")
    b.receive(b"\x00\xffnot sip", ALICE, 0.0)
    statuses = [r.status for r in answers(b, raw("INVITE", extra=[("Replaces", "bad")]))]
    assert statuses == [400]


def test_pending_request_of_a_call_that_ends_is_answered_481(pair: Pair) -> None:
    net, a, b = pair
    ca, cb = establish(net, a, b)
    a.request_in_call(ca, "INFO", net.now, body=b"x", content_type="text/plain")
    net.run()
    one(net.take(b, RequestReceived))
    a.bye(ca, net.now)
    net.run()
    assert [m.status for m in net.sent("INFO") if isinstance(m, Response)] == [481]
    assert len(b.layer) <= 3


# Route set ---------------------------------------------------------------------------------------


def test_record_route_becomes_the_route_set_of_in_dialog_requests(pair: Pair) -> None:
    # b is reached "through" a proxy that is really b itself: the Record-Route names b's address
    net, a, b = pair
    a.invite(uri(BOB, "b"), OFFER, 0.0, headers=[("Record-Route", "<sip:127.0.0.1:5080;lr>")])
    net.run()
    inc = one(net.take(b, IncomingInvite))
    b.answer_invite(inc.call, 200, net.now, sdp=ANSWER)  # type: ignore[attr-defined]
    net.run()
    cb = inc.call  # type: ignore[attr-defined]
    d = b.dialog(cb)
    assert d is not None and [str(r.uri) for r in d.route_set] == ["sip:127.0.0.1:5080;lr"]
    b.request_in_call(cb, "INFO", net.now, body=b"x", content_type="text/plain")
    info = [m for m in net.sent("INFO") if isinstance(m, Request)]
    b_msgs = [parse_message(data) for data, _ in b.messages_to_send()]
    (sent_info,) = [m for m in b_msgs if isinstance(m, Request)]
    assert info == [] and sent_info.headers.get("Route") == "<sip:127.0.0.1:5080;lr>"
    assert str(sent_info.uri) == "sip:alice@127.0.0.1:5070"


def test_referred_request_takes_replaces_from_refer_to_and_copies_referred_by() -> None:
    replaces = Replaces("c1@h", to_tag="t1", from_tag="f1")
    target = uri(CAROL, "carol").replace(headers=(("Replaces", str(replaces)),))
    refer = Request("REFER", uri(BOB, "b"), Headers([("Refer-To", f"<{target}>"),
                                                      ("Referred-By", "<sip:alice@127.0.0.1>")]))
    to, headers = referred_request(refer)
    assert to == uri(CAROL, "carol")
    assert headers == [("Replaces", "c1@h;to-tag=t1;from-tag=f1"), ("Referred-By", "<sip:alice@127.0.0.1>")]


def test_refer_with_replaces_round_trips_through_the_wire(pair: Pair) -> None:
    net, a, b = pair
    ca, cb = establish(net, a, b)
    replaces = Replaces("c1@h", to_tag="t1", from_tag="f1")
    target = uri(CAROL, "carol").replace(headers=(("Replaces", str(replaces)),))
    a.refer(ca, NameAddr(None, target), net.now)
    net.run()
    rx = one(net.take(b, RequestReceived))
    to, headers = referred_request(rx.request)  # type: ignore[attr-defined]
    assert to == uri(CAROL, "carol") and headers == [("Replaces", str(replaces))]


# SUBSCRIBE/NOTIFY ----------------------------------------------------------------------------------


def test_subscription_dialog_carries_notifies_until_one_says_terminated(pair: Pair) -> None:
    net, a, b = pair
    b.app_methods.add("SUBSCRIBE")
    sub = a.subscribe(uri(BOB, "b"), "presence", 0.0, expires=60)
    net.run()
    rx = one(net.take(b, RequestReceived))
    assert rx.request.headers.get("Event") == "presence"  # type: ignore[attr-defined]
    notifier = b.respond(rx.rid, 200, net.now, headers=[("Expires", "60")])  # type: ignore[attr-defined]
    assert notifier is not None
    net.run()
    assert one(net.take(a, RequestCompleted)).response.status == 200  # type: ignore[attr-defined]
    assert a.call_state(sub) == "confirmed" and a.dialog(sub).id.call_id == b.dialog(notifier).id.call_id  # type: ignore[union-attr]
    for state in ("active;expires=60", "terminated;reason=timeout"):
        b.request_in_call(notifier, "NOTIFY", net.now, headers=[("Event", "presence"),
                          ("Subscription-State", state)], body=b"open", content_type="text/plain")
        net.run()
        notify = one(net.take(a, RequestReceived))
        assert notify.call == sub and notify.request.body == b"open"  # type: ignore[attr-defined]
        a.respond(notify.rid, 200, net.now)  # type: ignore[attr-defined]
        net.run()
    assert one(net.take(a, CallTerminated)) == CallTerminated(sub, "terminated")
    assert one(net.take(b, CallTerminated)) == CallTerminated(notifier, "terminated")
    assert len(a) == len(b) == 0 and net.sent("BYE") == []


def test_subscribe_without_a_handler_gets_489_and_leaves_nothing(pair: Pair) -> None:
    net, a, b = pair
    sub = a.subscribe(uri(BOB, "b"), "presence", 0.0)
    net.run()
    done = one(net.take(a, RequestCompleted))
    assert done.op == sub and done.response.status == 489  # type: ignore[attr-defined]
    assert len(a) == len(b) == 0


# Reaping ------------------------------------------------------------------------------------------


def _bye(net: Net, a: UACore, b: UACore) -> None:
    ca, _ = establish(net, a, b)
    a.bye(ca, net.now)


def _reject(net: Net, a: UACore, b: UACore) -> None:
    a.invite(uri(BOB, "b"), OFFER, net.now)
    net.run()
    b.answer_invite(one(net.take(b, IncomingInvite)).call, 603, net.now)  # type: ignore[attr-defined]


def _cancel(net: Net, a: UACore, b: UACore) -> None:
    ca = a.invite(uri(BOB, "b"), OFFER, net.now)
    net.run()
    b.answer_invite(one(net.take(b, IncomingInvite)).call, 180, net.now)  # type: ignore[attr-defined]
    net.run()
    a.cancel(ca, net.now)


def _reinvite_then_bye(net: Net, a: UACore, b: UACore) -> None:
    ca, cb = establish(net, a, b)
    a.reinvite(ca, OFFER, net.now)
    net.run()
    b.answer_reinvite(cb, one(net.take(b, ReinviteReceived)).rid, 200, net.now, sdp=ANSWER)  # type: ignore[attr-defined]
    net.run()
    b.bye(cb, net.now)


def _refer_then_bye(net: Net, a: UACore, b: UACore) -> None:
    ca, cb = establish(net, a, b)
    a.refer(ca, NameAddr(None, uri(CAROL, "c")), net.now)
    net.run()
    refer_id = b.accept_refer(cb, one(net.take(b, RequestReceived)).rid, net.now)  # type: ignore[attr-defined]
    net.run()
    b.notify_refer(cb, refer_id, 503, net.now)
    net.run()
    a.bye(ca, net.now)


def _never_acked(net: Net, a: UACore, b: UACore) -> None:
    a.invite(uri(BOB, "b"), OFFER, net.now)
    net.run()
    b.answer_invite(one(net.take(b, IncomingInvite)).call, 200, net.now, sdp=ANSWER)  # type: ignore[attr-defined]
    net.advance(net.now + 64 * T1 + 1, lambda m: isinstance(m, Request) and m.method == "ACK")


@pytest.mark.parametrize("scenario", [_bye, _reject, _cancel, _reinvite_then_bye, _refer_then_bye,
                                      _never_acked])
def test_calls_dialogs_and_transactions_are_all_reaped(pair: Pair, scenario: object) -> None:
    net, a, b = pair
    scenario(net, a, b)  # type: ignore[operator]
    net.run()
    net.advance(net.now + 200.0)
    for ua in (a, b):
        assert len(ua) == 0 and len(ua.layer) == 0
        assert ua._by_dialog == {} and ua._by_invite_key == {} and ua._server == {} and ua._client == {}
        assert ua.get_timer() is None


# Random walks -------------------------------------------------------------------------------------

ACTIONS = st.sampled_from(["invite", "invite_late", "ring", "answer", "answer", "reject", "cancel", "bye",
                           "reinvite", "reinvite", "answer_reinvite", "answer_reinvite", "refer", "info",
                           "options", "advance", "lose"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(ACTIONS, st.booleans(), st.integers(0, 3)), max_size=25), st.integers(0, 2**16))
def test_random_walks_never_raise_and_end_with_everything_reaped(
        steps: list[tuple[str, bool, int]], seed: int) -> None:
    a, b = core(ALICE, "alice", seed=seed), core(BOB, "bob", seed=seed + 1)
    net = Net(a, b)
    rng = random.Random(seed)
    lose = [0]

    def drop(_msg: Request | Response) -> bool:
        if lose[0]:
            lose[0] -= 1
            return True
        return False

    def pick(ua: UACore, kind: type) -> object | None:
        found = [e for e in seen[id(ua)] if isinstance(e, kind) and (
            ua.call_state(e.call) in ("incoming", "early") if kind is IncomingInvite  # type: ignore[attr-defined]
            else e.rid in ua._server)]  # type: ignore[attr-defined]
        return rng.choice(found) if found else None

    seen: dict[int, list[object]] = {id(a): [], id(b): []}
    for action, from_a, n in steps:
        me, peer = (a, b) if from_a else (b, a)
        net.collect()
        for ua in (a, b):
            seen[id(ua)].extend(net.take(ua))
        calls = [h for h in list(me._calls)]
        call = rng.choice(calls) if calls else None
        try:
            if action == "invite":
                me.invite(uri(net.addr_of(peer), "x"), OFFER, net.now)
            elif action == "invite_late":
                me.invite(uri(net.addr_of(peer), "x"), None, net.now, answer_for=lambda o: ANSWER)
            elif action in ("ring", "answer", "reject"):
                inc = pick(me, IncomingInvite)
                if inc is not None:
                    status = {"ring": 180, "answer": 200, "reject": 486}[action]
                    me.answer_invite(inc.call, status, net.now, sdp=ANSWER)  # type: ignore[attr-defined]
            elif action == "cancel" and call is not None:
                me.cancel(call, net.now)
            elif action == "bye" and call is not None:
                me.bye(call, net.now)
            elif action == "reinvite" and call is not None:
                me.reinvite(call, OFFER, net.now)
            elif action == "answer_reinvite":
                rx = pick(me, ReinviteReceived)
                if rx is not None:
                    me.answer_reinvite(rx.call, rx.rid, 200 if n else 488, net.now, sdp=ANSWER)  # type: ignore[attr-defined]
            elif action == "refer" and call is not None:
                me.refer(call, NameAddr(None, uri(CAROL, "c")), net.now)
            elif action == "info" and call is not None:
                me.request_in_call(call, "INFO", net.now, body=b"x", content_type="text/plain")
            elif action == "options":
                me.request("OPTIONS", uri(net.addr_of(peer), "x"), net.now)
            elif action == "advance":
                net.advance(net.now + n * T1, drop)
            elif action == "lose":
                lose[0] = n
        except UAError:
            pass
        net.run(drop)
        # whatever the peer asked for and nobody answers gets a final answer, as an app would
        for ua in (a, b):
            for e in net.take(ua):
                if isinstance(e, RequestReceived) and e.rid in ua._server:
                    ua.respond(e.rid, 603 if e.request.method == "REFER" else 200, net.now)
                else:
                    seen[id(ua)].append(e)
    lose[0] = 0
    for ua in (a, b):  # hang up everything, answer what is still waiting
        for e in seen[id(ua)]:
            if isinstance(e, IncomingInvite) and ua.call_state(e.call) in ("incoming", "early"):
                ua.answer_invite(e.call, 480, net.now)
            if isinstance(e, ReinviteReceived) and e.rid in ua._server:
                ua.answer_reinvite(e.call, e.rid, 488, net.now)
        for handle in list(ua._calls):
            try:
                ua.bye(handle, net.now)
            except UAError:
                pass
        net.run()
    net.advance(net.now + 400.0)
    for ua in (a, b):
        for handle in list(ua._calls):  # a call that came up while hanging up the others
            ua.bye(handle, net.now)
    net.advance(net.now + 400.0)
    for ua in (a, b):
        assert len(ua) == 0 and len(ua.layer) == 0 and ua.get_timer() is None


HEADER_VALUES = st.one_of(st.just(""), st.text("abcdef;=<>:@.0123456789 -,sip", max_size=30))


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["INVITE", "BYE", "INFO", "REFER", "NOTIFY", "SUBSCRIBE", "OPTIONS", "ACK", "CANCEL",
                        "UPDATE", "PRACK", "FOO"]),
       st.booleans(), st.integers(0, 20),
       st.lists(st.tuples(st.sampled_from(["Replaces", "Refer-To", "Referred-By", "Event", "Require",
                                           "Subscription-State", "Content-Type", "Contact"]),
                          HEADER_VALUES), max_size=4),
       st.binary(max_size=40))
def test_any_request_from_the_peer_is_answered_or_dropped_without_raising(
        method: str, in_dialog: bool, seq: int, extra: list[tuple[str, str]], body: bytes) -> None:
    a, b = core(ALICE, "alice"), core(BOB, "bob")
    net = Net(a, b)
    ca, _ = establish(net, a, b)
    d = a.dialog(ca)
    assert d is not None
    to = f"<sip:bob@127.0.0.1:5080>;tag={d.remote_tag}" if in_dialog else "<sip:bob@127.0.0.1:5080>"
    h = Headers([("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKfuzz"), ("Max-Forwards", "70"),
                 ("From", f"<sip:alice@127.0.0.1>;tag={d.local_tag}"), ("To", to), ("Call-ID", d.call_id),
                 ("CSeq", f"{seq} {method}")])
    for name, value in extra:
        h.add(name, value)
    data = Request(method, URI.parse("sip:bob@127.0.0.1:5080"), h, body).to_bytes()
    b.receive(data, ALICE, net.now)
    out = [parse_message(m) for m, _ in b.messages_to_send()]
    if method != "ACK":
        assert len(out) <= 2  # a final answer (after a 100 Trying), or nothing yet for the app
    net.collect()
    net.advance(net.now + 100.0)


def _ring_then_answer(net: Net, a: UACore, b: UACore) -> None:
    a.invite(uri(BOB, "b"), OFFER, net.now)
    net.run()
    inc = one(net.take(b, IncomingInvite)).call  # type: ignore[attr-defined]
    b.answer_invite(inc, 180, net.now)
    net.run()
    b.answer_invite(inc, 200, net.now, sdp=ANSWER)
    net.run()
    b.bye(inc, net.now)


def test_calls_move_only_along_the_state_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from sipmob.sip.callstate import TRANSITIONS, CallInput, CallState
    from sipmob.sip.uabase import UABase

    taken: set[tuple[CallState, CallInput]] = set()
    original = UABase._move

    def move(self: UABase, c: object, event: CallInput) -> None:
        before = c.state  # type: ignore[attr-defined]
        original(self, c, event)  # type: ignore[arg-type]
        assert c.state is TRANSITIONS[before][event]  # type: ignore[attr-defined]
        taken.add((before, event))

    monkeypatch.setattr(UABase, "_move", move)
    for scenario in (_bye, _reject, _cancel, _reinvite_then_bye, _refer_then_bye, _never_acked,
                     _ring_then_answer):
        a, b = core(ALICE, "alice"), core(BOB, "bob")
        net = Net(a, b)
        scenario(net, a, b)
        net.run()
        net.advance(net.now + 200.0)
    s, i = CallState, CallInput
    wanted = {(s.CALLING, i.PROVISIONAL), (s.INCOMING, i.RING), (s.INCOMING, i.ANSWER), (s.EARLY, i.ANSWER),
              (s.ANSWERED, i.ACK), (s.CALLING, i.ACCEPTED), (s.EARLY, i.ACCEPTED), (s.CONFIRMED, i.END),
              (s.EARLY, i.END), (s.INCOMING, i.END), (s.ANSWERED, i.END)}
    assert not wanted - taken, [(x.name, y.name) for x, y in wanted - taken]
    # and the random walk of two cores: any move off the table fails inside `move`
    test_random_walks_never_raise_and_end_with_everything_reaped()


# Out-of-dialog REFER (RFC 3515 §2.4), as Session Handoff sends and receives it -------------------


def test_out_of_dialog_refer_is_481_unless_the_application_takes_refer(pair: Pair) -> None:
    net, a, b = pair
    h = a.refer_outside(uri(BOB, "b"), NameAddr(None, uri(CAROL, "c")), net.now)
    net.run()
    done = one(net.take(a, RequestCompleted))
    assert done.op == h and done.response.status == 481  # type: ignore[attr-defined]
    assert len(a) == 0 and not net.take(b, RequestReceived)


def test_out_of_dialog_refer_makes_a_dialog_whose_notifies_report_progress(pair: Pair) -> None:
    net, a, b = pair
    b.app_methods.add("REFER")
    target = uri(CAROL, "c").replace(headers=(("Replaces", "x1;to-tag=t;from-tag=f"),))
    h = a.refer_outside(uri(BOB, "b"), NameAddr(None, target), net.now,
                        referred_by=NameAddr(None, uri(ALICE, "alice")),
                        headers=[("Target-Dialog", "x1;local-tag=f;remote-tag=t")])
    net.run()
    got = one(net.take(b, RequestReceived))
    assert got.call is None  # type: ignore[attr-defined]
    refer = got.request  # type: ignore[attr-defined]
    assert refer.headers.get("Target-Dialog") == "x1;local-tag=f;remote-tag=t"
    what = referred(refer)
    assert what.method == "INVITE" and what.target == uri(CAROL, "c")
    assert what.replaces is not None and what.replaces.call_id == "x1"
    assert ("Referred-By", str(NameAddr(None, uri(ALICE, "alice")))) in what.headers
    sub = b.accept_refer_outside(got.rid, net.now)  # type: ignore[attr-defined]
    net.run()
    assert one(net.take(a, RequestCompleted)).response.status == 202  # type: ignore[attr-defined]
    first = one(net.take(a, ReferNotified))
    assert (first.op, first.status, first.terminated) == (h, 100, False)  # type: ignore[attr-defined]
    assert a.call_state(h) == "confirmed" and b.call_state(sub) == "confirmed"
    b.notify_refer(sub, refer.cseq.seq, 200, net.now)
    net.run()
    last = one(net.take(a, ReferNotified))
    assert (last.status, last.terminated) == (200, True)  # type: ignore[attr-defined]
    net.advance(net.now + 200.0)
    for ua in (a, b):
        assert len(ua) == 0 and len(ua.layer) == 0 and ua.get_timer() is None


def test_an_out_of_dialog_refer_without_one_contact_is_400(pair: Pair) -> None:
    net, a, b = pair
    b.app_methods.add("REFER")
    h = a.refer_outside(uri(BOB, "b"), NameAddr(None, uri(CAROL, "c")), net.now)
    for data, _dest in a.messages_to_send():
        msg = parse_message(data)
        assert isinstance(msg, Request)
        msg.headers.remove("Contact")
        b.receive(msg.to_bytes(), ALICE, net.now)
    net.run()
    assert not net.take(b, RequestReceived)
    assert any(isinstance(r, Response) and r.status == 400 for _, _, d in net.wire
               if isinstance(r := parse_message(d), Response))
    assert h


def test_a_nested_refer_asks_for_a_refer_carrying_the_inner_refer_to() -> None:
    inner = uri(CAROL, "cn").replace(headers=(("Replaces", "d1;to-tag=cn;from-tag=dev"),))
    outer = uri(ALICE, "mn").replace(params=(("method", "REFER"),), headers=(("Refer-To", f"<{inner}>"),))
    h = Headers([("Via", "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKx"), ("From", "<sip:b@h>;tag=1"),
                 ("To", "<sip:a@h>"), ("Call-ID", "c"), ("CSeq", "1 REFER"), ("Max-Forwards", "70"),
                 ("Refer-To", f"<{outer}>"), ("Referred-By", "<sip:mn@h>")])
    what = referred(Request("REFER", uri(BOB, "b"), h))
    assert what.method == "REFER" and what.target == uri(ALICE, "mn")
    assert what.replaces is None
    carried = dict(what.headers)
    assert NameAddr.parse(carried["Refer-To"]).uri.header("Replaces") == "d1;to-tag=cn;from-tag=dev"
    again = referred(Request("REFER", uri(ALICE, "mn"), Headers([*h.items()[:-2],
                     ("Refer-To", carried["Refer-To"])])))
    assert again.method == "INVITE" and again.replaces is not None and again.replaces.from_tag == "dev"


def test_a_ua_that_only_probes_allows_options_alone_and_sends_where_it_is_told() -> None:
    a = core(ALICE, "alice")
    b = core(BOB, "prober", allow=("OPTIONS",), aor=URI.parse("sip:saproxy@gw"))
    net = Net(a, b)
    a.invite(uri(BOB, "prober"), OFFER, net.now)
    net.run()
    failed = one(net.take(a, CallFailed))
    assert failed.status == 405  # type: ignore[attr-defined]
    allow = [m for m in net.sent("INVITE") if isinstance(m, Response)][-1].headers.get("Allow")
    assert allow == "OPTIONS"
    # to ALICE's address whatever the URI's host says (an outbound proxy, or a device file's address)
    op = b.request("OPTIONS", URI.parse("sip:tv@tv.invalid"), net.now, destination=ALICE)
    net.run()
    done = one(net.take(b, RequestCompleted))
    assert done.op == op and done.response.status == 200  # type: ignore[attr-defined]
    options = [m for m in net.sent("OPTIONS") if isinstance(m, Request)][-1]
    assert str(options.from_.uri) == "sip:saproxy@gw"


def test_a_notify_that_overtakes_the_202_makes_the_refer_dialog(pair: Pair) -> None:
    net, a, b = pair
    b.app_methods.add("REFER")
    h = a.refer_outside(uri(BOB, "b"), NameAddr(None, uri(CAROL, "c")), net.now)
    net.run()
    got = one(net.take(b, RequestReceived))
    b.accept_refer_outside(got.rid, net.now)  # type: ignore[attr-defined]
    out = b.messages_to_send()
    assert [parse_message(d).method if isinstance(parse_message(d), Request) else "202"  # type: ignore[union-attr]
            for d, _ in out] == ["202", "NOTIFY"]
    for data, _ in reversed(out):  # the NOTIFY first (RFC 3515 §2.4.5 allows it)
        a.receive(data, BOB, net.now)
    net.run()
    first = one(net.take(a, ReferNotified))
    assert (first.op, first.status) == (h, 100)  # type: ignore[attr-defined]
    assert one(net.take(a, RequestCompleted)).response.status == 202  # type: ignore[attr-defined]
    assert a.call_state(h) == "confirmed"
    answers = [m for _, _, d in net.wire if isinstance(m := parse_message(d), Response)
               and m.cseq.method == "NOTIFY"]
    assert answers and all(r.status == 200 for r in answers)
def test_481_to_a_request_in_an_early_dialog_we_answer_ends_it_with_487_not_bye(pair: Pair) -> None:
    net, a, b = pair
    ca = a.invite(uri(BOB, "b"), OFFER, 0.0)
    net.run()
    inc = one(net.take(b, IncomingInvite))
    b.answer_invite(inc.call, 180, net.now)  # type: ignore[attr-defined]
    net.run(drop=lambda m: isinstance(m, Response) and m.status == 180)  # alice never hears of the dialog
    b.refer(inc.call, NameAddr(None, uri(CAROL, "c")), net.now)  # type: ignore[attr-defined]
    net.run()
    assert [r.status for r in net.sent("REFER") if isinstance(r, Response)] == [481]
    assert one(net.take(a, CallFailed)) == CallFailed(ca, 487, "Request Terminated")
    assert net.sent("BYE") == []
    net.advance(net.now + 200.0)
    for ua in (a, b):
        assert len(ua) == 0 and len(ua.layer) == 0 and ua.get_timer() is None
