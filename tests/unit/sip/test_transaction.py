"""The four RFC 3261 §17 transaction machines and the layer that owns them, stepped with fake time."""

from __future__ import annotations

import gc
import itertools
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipmob.sip.message import Headers, Request, Response, make_response, parse_message
from sipmob.sip.transaction import (
    INITIAL_STATE,
    TIMERS,
    TRANSITIONS,
    TU_INPUTS,
    AckReceived,
    Input,
    LocalProtocolError,
    Machine,
    MessageDiscarded,
    RequestReceived,
    ResponseReceived,
    State,
    Timer,
    TimerConfig,
    TransactionKey,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimedOut,
    TransportError,
)
from sipmob.sip.transport import Address
from sipmob.sip.uri import URI

ALICE = Address("127.0.0.1", 5070, "udp")
BOB = Address("127.0.0.1", 5080, "udp")
ALICE_TCP = Address("127.0.0.1", 5070, "tcp")
BOB_TCP = Address("127.0.0.1", 5080, "tcp")
T1, T2, T4 = 0.5, 4.0, 5.0


def layer(*local: Address, **timers: float) -> TransactionLayer:
    counter = itertools.count()
    return TransactionLayer(list(local), TimerConfig(**timers), branch_token=lambda: f"t{next(counter)}")


def request(method: str, *, call_id: str = "call-1", seq: int = 1, to_tag: str | None = None) -> Request:
    to = "<sip:bob@127.0.0.1:5080>" + (f";tag={to_tag}" if to_tag else "")
    headers = Headers([("Max-Forwards", "70"), ("From", "<sip:alice@127.0.0.1>;tag=a1"), ("To", to),
                       ("Call-ID", call_id), ("CSeq", f"{seq} {method}")])
    return Request(method, URI.parse("sip:bob@127.0.0.1:5080"), headers)


def events(lyr: TransactionLayer) -> list[object]:
    out = []
    while (event := lyr.next_event()) is not None:
        out.append(event)
    return out


def only(lyr: TransactionLayer, kind: type) -> list[object]:
    return [e for e in events(lyr) if isinstance(e, kind)]


def sent(lyr: TransactionLayer) -> list[Request | Response]:
    return [parse_message(data) for data, _ in lyr.messages_to_send()]


def run_until(lyr: TransactionLayer, end: float) -> list[float]:
    """Fire every timer due up to `end`, returning when each fired."""
    fired = []
    while (deadline := lyr.get_timer()) is not None and deadline <= end:
        lyr.handle_timer(deadline)
        fired.append(deadline)
    return fired


def send_times(lyr: TransactionLayer, end: float) -> list[float]:
    """The times at which the layer sent something, firing its timers up to `end`."""
    times = []
    while (deadline := lyr.get_timer()) is not None and deadline <= end:
        lyr.handle_timer(deadline)
        if lyr.messages_to_send():
            times.append(deadline)
    return times


class Pair:
    """Two layers (Alice, Bob) and a wire between them that we move messages across by hand."""

    def __init__(self, transport: str = "udp", **timers: float) -> None:
        self.a_addr = Address("127.0.0.1", 5070, transport)
        self.b_addr = Address("127.0.0.1", 5080, transport)
        self.alice = layer(self.a_addr, **timers)
        self.bob = layer(self.b_addr, **timers)

    def to_bob(self, now: float) -> list[Request | Response]:
        msgs = self.alice.messages_to_send()
        for data, dest in msgs:
            assert dest == self.b_addr
            self.bob.receive(data, self.a_addr, now)
        return [parse_message(data) for data, _ in msgs]

    def to_alice(self, now: float) -> list[Request | Response]:
        msgs = self.bob.messages_to_send()
        for data, dest in msgs:
            assert dest == self.a_addr
            self.alice.receive(data, self.b_addr, now)
        return [parse_message(data) for data, _ in msgs]


def server_request(pair: Pair) -> RequestReceived:
    (event,) = only(pair.bob, RequestReceived)
    assert isinstance(event, RequestReceived)
    return event


# The tables ---------------------------------------------------------------------------------


def test_every_state_of_every_machine_has_its_timers_listed() -> None:
    for machine, states in TRANSITIONS.items():
        for state in states:
            assert (machine, state) in TIMERS


def test_every_timer_input_in_the_table_has_its_timer_running_in_that_state() -> None:
    timer_inputs = {Input[f"TIMER_{t.name}"]: t for t in Timer}
    for machine, states in TRANSITIONS.items():
        for state, rows in states.items():
            for input_ in rows:
                if input_ in timer_inputs:
                    assert timer_inputs[input_] in TIMERS[(machine, state)], (machine, state, input_)


def test_no_transition_leaves_the_machine_it_belongs_to() -> None:
    for states in TRANSITIONS.values():
        for rows in states.values():
            for _, next_state in rows.values():
                assert next_state is State.TERMINATED or next_state in states


# INVITE client transaction (Fig. 5) ---------------------------------------------------------


def test_invite_client_retransmits_at_doubling_intervals_over_udp() -> None:
    alice = layer(ALICE)
    alice.send_request(request("INVITE"), BOB, 0.0)
    alice.messages_to_send()
    # Timer A: T1, 2T1, 4T1... uncapped (§17.1.1.2), until Timer B at 64*T1.
    assert send_times(alice, 64 * T1 - 0.001) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]


def test_invite_client_times_out_at_timer_b() -> None:
    alice = layer(ALICE)
    key = alice.send_request(request("INVITE"), BOB, 0.0)
    run_until(alice, 64 * T1)
    evs = events(alice)
    assert TransactionTimedOut(key, Timer.B) in evs
    assert TransactionTerminated(key) in evs
    assert len(alice) == 0


def test_invite_client_does_not_retransmit_over_tcp() -> None:
    alice = layer(ALICE_TCP)
    alice.send_request(request("INVITE"), BOB_TCP, 0.0)
    alice.messages_to_send()
    assert send_times(alice, 64 * T1) == []


def test_invite_client_stops_retransmitting_on_a_provisional_response() -> None:
    pair = Pair()
    key = pair.alice.send_request(request("INVITE"), pair.b_addr, 0.0)
    pair.to_bob(0.0)
    invite = server_request(pair).request
    pair.bob.send_response(make_response(invite, 180, to_tag="b1"), 0.1)
    pair.to_alice(0.1)
    assert pair.alice.state_of(key) is State.PROCEEDING
    assert send_times(pair.alice, 60.0) == []


def test_invite_client_acks_a_non_2xx_final_response_with_the_invite_branch() -> None:
    pair = Pair()
    key = pair.alice.send_request(request("INVITE"), pair.b_addr, 0.0)
    (invite,) = pair.to_bob(0.0)
    inv_req = server_request(pair).request
    pair.bob.send_response(make_response(inv_req, 486, to_tag="b1"), 0.1)
    pair.to_alice(0.1)
    (ack,) = sent(pair.alice)
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert [v.branch for v in ack.vias] == [invite.top_via.branch]
    assert ack.to.tag == "b1" and ack.cseq.seq == 1 and ack.cseq.method == "ACK"
    assert ack.uri == invite.uri
    assert pair.alice.state_of(key) is State.COMPLETED


def test_invite_client_acks_each_retransmission_of_the_final_response_without_telling_the_tu() -> None:
    pair = Pair()
    pair.alice.send_request(request("INVITE"), pair.b_addr, 0.0)
    pair.to_bob(0.0)
    inv_req = server_request(pair).request
    final = make_response(inv_req, 486, to_tag="b1").to_bytes()
    pair.alice.receive(final, pair.b_addr, 0.1)
    assert len(only(pair.alice, ResponseReceived)) == 1
    pair.alice.messages_to_send()
    pair.alice.receive(final, pair.b_addr, 0.6)
    assert [m.method for m in sent(pair.alice) if isinstance(m, Request)] == ["ACK"]
    assert only(pair.alice, ResponseReceived) == []


def test_invite_client_timer_d_is_32_seconds_over_udp() -> None:
    pair = Pair()
    key = pair.alice.send_request(request("INVITE"), pair.b_addr, 0.0)
    pair.to_bob(0.0)
    pair.alice.receive(make_response(server_request(pair).request, 603, to_tag="b").to_bytes(),
                       pair.b_addr, 1.0)
    assert pair.alice.get_timer() == 1.0 + 32.0
    run_until(pair.alice, 33.0)
    assert pair.alice.state_of(key) is State.TERMINATED


def test_invite_client_timer_d_is_zero_over_tcp() -> None:
    pair = Pair("tcp")
    key = pair.alice.send_request(request("INVITE"), pair.b_addr, 0.0)
    pair.to_bob(0.0)
    pair.alice.receive(make_response(server_request(pair).request, 603, to_tag="b").to_bytes(),
                       pair.b_addr, 1.0)
    assert pair.alice.get_timer() == 1.0
    pair.alice.handle_timer(1.0)
    assert pair.alice.state_of(key) is State.TERMINATED


def test_invite_client_passes_every_2xx_to_the_tu_in_accepted() -> None:
    pair = Pair()
    key = pair.alice.send_request(request("INVITE"), pair.b_addr, 0.0)
    pair.to_bob(0.0)
    ok = make_response(server_request(pair).request, 200, to_tag="b1").to_bytes()
    pair.alice.receive(ok, pair.b_addr, 0.1)
    pair.alice.receive(ok, pair.b_addr, 0.6)
    assert pair.alice.state_of(key) is State.ACCEPTED
    assert len(only(pair.alice, ResponseReceived)) == 2
    assert pair.alice.messages_to_send() == []  # the ACK for a 2xx is the TU's


def test_invite_client_leaves_accepted_at_timer_m() -> None:
    pair = Pair()
    key = pair.alice.send_request(request("INVITE"), pair.b_addr, 0.0)
    pair.to_bob(0.0)
    pair.alice.receive(make_response(server_request(pair).request, 200, to_tag="b").to_bytes(),
                       pair.b_addr, 1.0)
    assert pair.alice.get_timer() == 1.0 + 64 * T1
    run_until(pair.alice, 1.0 + 64 * T1)
    assert pair.alice.state_of(key) is State.TERMINATED


def test_invite_client_gives_up_in_proceeding_at_timer_c() -> None:
    pair = Pair(timer_c=100.0)
    key = pair.alice.send_request(request("INVITE"), pair.b_addr, 0.0)
    pair.to_bob(0.0)
    ringing = make_response(server_request(pair).request, 180, to_tag="b").to_bytes()
    pair.alice.receive(ringing, pair.b_addr, 1.0)
    pair.alice.receive(ringing, pair.b_addr, 90.0)  # a 1xx does not restart it
    run_until(pair.alice, 101.0)
    assert TransactionTimedOut(key, Timer.C) in events(pair.alice)
    assert pair.alice.state_of(key) is State.TERMINATED


def test_invite_client_reports_a_transport_error_and_terminates() -> None:
    alice = layer(ALICE)
    key = alice.send_request(request("INVITE"), BOB, 0.0)
    alice.transport_error(BOB, 0.1)
    assert TransportError(key, BOB) in events(alice)
    assert len(alice) == 0


# CANCEL (§9) ----------------------------------------------------------------------------------


def test_cancel_is_its_own_transaction_with_the_invite_branch() -> None:
    pair = Pair()
    key = pair.alice.send_request(request("INVITE"), pair.b_addr, 0.0)
    (invite,) = pair.to_bob(0.0)
    pair.bob.send_response(make_response(server_request(pair).request, 180, to_tag="b"), 0.1)
    pair.to_alice(0.1)
    cancel_key = pair.alice.cancel(key, 1.0)
    (cancel,) = pair.to_bob(1.0)
    assert cancel_key != key and cancel_key.method == "CANCEL" and cancel_key.branch == key.branch
    assert isinstance(cancel, Request) and cancel.method == "CANCEL"
    assert cancel.top_via.branch == invite.top_via.branch and len(cancel.vias) == 1
    assert cancel.cseq.seq == invite.cseq.seq
    assert len(pair.alice) == 2


def test_cancel_before_a_provisional_response_is_refused() -> None:
    alice = layer(ALICE)
    key = alice.send_request(request("INVITE"), BOB, 0.0)
    with pytest.raises(LocalProtocolError):
        alice.cancel(key, 0.1)


def test_cancel_bounds_the_invite_transaction_to_64_t1() -> None:
    pair = Pair()
    key = pair.alice.send_request(request("INVITE"), pair.b_addr, 0.0)
    pair.to_bob(0.0)
    pair.bob.send_response(make_response(server_request(pair).request, 180, to_tag="b"), 0.1)
    pair.to_alice(0.1)
    pair.alice.cancel(key, 1.0)
    run_until(pair.alice, 1.0 + 64 * T1)
    assert TransactionTimedOut(key, Timer.C) in events(pair.alice)


def test_server_matches_a_cancel_to_the_invite_it_cancels() -> None:
    pair = Pair()
    key = pair.alice.send_request(request("INVITE"), pair.b_addr, 0.0)
    pair.to_bob(0.0)
    invite_event = server_request(pair)
    pair.bob.send_response(make_response(invite_event.request, 180, to_tag="b"), 0.1)
    pair.to_alice(0.1)
    pair.alice.cancel(key, 1.0)
    pair.to_bob(1.0)
    (cancel_event,) = only(pair.bob, RequestReceived)
    assert isinstance(cancel_event, RequestReceived)
    assert cancel_event.cancels == invite_event.transaction_key
    assert cancel_event.transaction_key != invite_event.transaction_key


def test_server_finds_nothing_to_cancel_for_an_unknown_branch() -> None:
    bob = layer(BOB)
    cancel = request("CANCEL")
    cancel.headers.add("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKnothing", first=True)
    bob.receive(cancel.to_bytes(), ALICE, 0.0)
    (event,) = only(bob, RequestReceived)
    assert isinstance(event, RequestReceived) and event.cancels is None


# Non-INVITE client transaction (Fig. 6) -----------------------------------------------------


def test_non_invite_client_retransmits_with_backoff_capped_at_t2() -> None:
    alice = layer(ALICE)
    alice.send_request(request("OPTIONS"), BOB, 0.0)
    alice.messages_to_send()
    assert send_times(alice, 64 * T1 - 0.001) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]


def test_non_invite_client_times_out_at_timer_f() -> None:
    alice = layer(ALICE)
    key = alice.send_request(request("OPTIONS"), BOB, 0.0)
    run_until(alice, 64 * T1)
    assert TransactionTimedOut(key, Timer.F) in events(alice)
    assert len(alice) == 0


def test_non_invite_client_retransmits_every_t2_in_proceeding() -> None:
    pair = Pair()
    key = pair.alice.send_request(request("OPTIONS"), pair.b_addr, 0.0)
    pair.to_bob(0.0)
    pair.alice.receive(make_response(server_request(pair).request, 100).to_bytes(), pair.b_addr, 0.2)
    assert pair.alice.state_of(key) is State.PROCEEDING
    # the E running when the 1xx came fires at 0.5, then every T2 (§17.1.2.2)
    assert send_times(pair.alice, 13.0) == [0.5, 4.5, 8.5, 12.5]


def test_non_invite_client_waits_timer_k_then_terminates() -> None:
    pair = Pair()
    key = pair.alice.send_request(request("OPTIONS"), pair.b_addr, 0.0)
    pair.to_bob(0.0)
    ok = make_response(server_request(pair).request, 200, to_tag="b").to_bytes()
    pair.alice.receive(ok, pair.b_addr, 1.0)
    pair.alice.receive(ok, pair.b_addr, 2.0)  # absorbed in Completed
    assert len(only(pair.alice, ResponseReceived)) == 1
    assert pair.alice.get_timer() == 1.0 + T4
    run_until(pair.alice, 1.0 + T4)
    assert pair.alice.state_of(key) is State.TERMINATED


def test_non_invite_client_timer_k_is_zero_over_tcp() -> None:
    pair = Pair("tcp")
    pair.alice.send_request(request("OPTIONS"), pair.b_addr, 0.0)
    pair.to_bob(0.0)
    pair.alice.receive(make_response(server_request(pair).request, 200, to_tag="b").to_bytes(),
                       pair.b_addr, 1.0)
    assert pair.alice.get_timer() == 1.0


# INVITE server transaction (Fig. 7, RFC 6026) -----------------------------------------------


def invite_at_bob(transport: str = "udp", **timers: float) -> tuple[Pair, RequestReceived, bytes]:
    pair = Pair(transport, **timers)
    pair.alice.send_request(request("INVITE"), pair.b_addr, 0.0)
    (data, _), = pair.alice.messages_to_send()
    pair.bob.receive(data, pair.a_addr, 0.0)
    return pair, server_request(pair), data


def test_invite_server_sends_100_trying_after_200_ms_of_tu_silence() -> None:
    pair, _, _ = invite_at_bob()
    assert pair.bob.messages_to_send() == []
    assert pair.bob.get_timer() == pytest.approx(0.2)
    pair.bob.handle_timer(0.2)
    (trying,) = sent(pair.bob)
    assert isinstance(trying, Response) and trying.status == 100 and trying.to.tag is None


def test_invite_server_sends_no_100_trying_when_the_tu_answers_first() -> None:
    pair, event, _ = invite_at_bob()
    pair.bob.send_response(make_response(event.request, 180, to_tag="b"), 0.1)
    pair.bob.messages_to_send()
    run_until(pair.bob, 0.3)
    assert pair.bob.messages_to_send() == []


def test_invite_server_answers_a_retransmission_with_the_last_provisional_response() -> None:
    pair, event, data = invite_at_bob()
    pair.bob.send_response(make_response(event.request, 180, to_tag="b"), 0.1)
    pair.bob.messages_to_send()
    pair.bob.receive(data, pair.a_addr, 0.5)
    (resent,) = sent(pair.bob)
    assert isinstance(resent, Response) and resent.status == 180
    assert only(pair.bob, RequestReceived) == []


def test_invite_server_retransmits_a_non_2xx_final_response_on_timer_g_until_timer_h() -> None:
    pair, event, _ = invite_at_bob()
    pair.bob.send_response(make_response(event.request, 486, to_tag="b"), 1.0)
    pair.bob.messages_to_send()
    times = send_times(pair.bob, 1.0 + 64 * T1 - 0.001)
    assert [round(t - 1.0, 3) for t in times] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    run_until(pair.bob, 1.0 + 64 * T1)
    assert TransactionTimedOut(event.transaction_key, Timer.H) in events(pair.bob)
    assert len(pair.bob) == 0


def test_invite_server_does_not_retransmit_over_tcp() -> None:
    pair, event, _ = invite_at_bob("tcp")
    pair.bob.send_response(make_response(event.request, 486, to_tag="b"), 1.0)
    pair.bob.messages_to_send()
    assert send_times(pair.bob, 1.0 + 64 * T1 - 0.001) == []


def test_invite_server_is_confirmed_by_the_ack_and_lingers_for_timer_i() -> None:
    pair, event, _ = invite_at_bob()
    pair.bob.send_response(make_response(event.request, 486, to_tag="b"), 1.0)
    pair.to_alice(1.0)
    pair.to_bob(1.0)  # Alice's ACK
    assert pair.bob.state_of(event.transaction_key) is State.CONFIRMED
    assert only(pair.bob, AckReceived) == []  # an ACK for a non-2xx is the transaction's
    assert pair.bob.get_timer() == 1.0 + T4
    run_until(pair.bob, 1.0 + T4)
    assert pair.bob.state_of(event.transaction_key) is State.TERMINATED


def test_invite_server_timer_i_is_zero_over_tcp() -> None:
    pair, event, _ = invite_at_bob("tcp")
    pair.bob.send_response(make_response(event.request, 486, to_tag="b"), 1.0)
    pair.to_alice(1.0)
    pair.to_bob(1.0)
    assert pair.bob.get_timer() == 1.0


def test_invite_server_in_accepted_absorbs_the_invite_and_sends_the_tus_2xx_retransmissions() -> None:
    pair, event, data = invite_at_bob()
    ok = make_response(event.request, 200, to_tag="b")
    pair.bob.send_response(ok, 1.0)
    pair.bob.messages_to_send()
    assert pair.bob.state_of(event.transaction_key) is State.ACCEPTED
    pair.bob.receive(data, pair.a_addr, 1.2)
    assert pair.bob.messages_to_send() == [] and only(pair.bob, RequestReceived) == []
    pair.bob.send_response(ok, 1.5)
    assert [m.status for m in sent(pair.bob) if isinstance(m, Response)] == [200]


def test_invite_server_passes_the_ack_for_a_2xx_to_the_tu() -> None:
    pair, event, _ = invite_at_bob()
    pair.bob.send_response(make_response(event.request, 200, to_tag="b"), 1.0)
    pair.to_alice(1.0)
    ack = request("ACK", to_tag="b")
    pair.alice.send_ack(ack, pair.b_addr)
    pair.to_bob(1.1)
    (got,) = only(pair.bob, AckReceived)
    assert isinstance(got, AckReceived) and got.request.method == "ACK"


def test_invite_server_leaves_accepted_at_timer_l() -> None:
    pair, event, _ = invite_at_bob()
    pair.bob.send_response(make_response(event.request, 200, to_tag="b"), 1.0)
    assert pair.bob.get_timer() == 1.0 + 64 * T1
    run_until(pair.bob, 1.0 + 64 * T1)
    assert pair.bob.state_of(event.transaction_key) is State.TERMINATED


def test_invite_server_refuses_a_provisional_response_after_the_final_one() -> None:
    pair, event, _ = invite_at_bob()
    pair.bob.send_response(make_response(event.request, 486, to_tag="b"), 1.0)
    with pytest.raises(LocalProtocolError):
        pair.bob.send_response(make_response(event.request, 180, to_tag="b"), 1.1)


# Non-INVITE server transaction (Fig. 8) -----------------------------------------------------


def options_at_bob(transport: str = "udp") -> tuple[Pair, RequestReceived, bytes]:
    pair = Pair(transport)
    pair.alice.send_request(request("OPTIONS"), pair.b_addr, 0.0)
    (data, _), = pair.alice.messages_to_send()
    pair.bob.receive(data, pair.a_addr, 0.0)
    return pair, server_request(pair), data


def test_non_invite_server_absorbs_a_retransmission_while_trying() -> None:
    pair, _, data = options_at_bob()
    pair.bob.receive(data, pair.a_addr, 0.5)
    assert pair.bob.messages_to_send() == [] and only(pair.bob, RequestReceived) == []


def test_non_invite_server_resends_its_last_provisional_response_in_proceeding() -> None:
    pair, event, data = options_at_bob()
    pair.bob.send_response(make_response(event.request, 100), 0.1)
    pair.bob.messages_to_send()
    pair.bob.receive(data, pair.a_addr, 0.5)
    assert [m.status for m in sent(pair.bob) if isinstance(m, Response)] == [100]


def test_non_invite_server_resends_its_final_response_in_completed() -> None:
    pair, event, data = options_at_bob()
    pair.bob.send_response(make_response(event.request, 200, to_tag="b"), 0.1)
    first = pair.bob.messages_to_send()
    pair.bob.receive(data, pair.a_addr, 0.5)
    assert pair.bob.messages_to_send() == first
    assert only(pair.bob, RequestReceived) == []


def test_non_invite_server_timer_j_is_64_t1_over_udp() -> None:
    pair, event, _ = options_at_bob()
    pair.bob.send_response(make_response(event.request, 200, to_tag="b"), 1.0)
    assert pair.bob.get_timer() == 1.0 + 64 * T1
    run_until(pair.bob, 1.0 + 64 * T1)
    assert TransactionTerminated(event.transaction_key) in events(pair.bob)


def test_non_invite_server_timer_j_is_zero_over_tcp() -> None:
    pair, event, _ = options_at_bob("tcp")
    pair.bob.send_response(make_response(event.request, 200, to_tag="b"), 1.0)
    assert pair.bob.get_timer() == 1.0


def test_non_invite_server_sends_a_response_routed_by_rport_and_received() -> None:
    pair, event, _ = options_at_bob()
    bob = pair.bob
    bob.send_response(make_response(event.request, 200, to_tag="b"), 0.1)
    ((_, dest),) = bob.messages_to_send()
    assert dest == pair.a_addr


# Matching (§17.1.3, §17.2.3) ----------------------------------------------------------------


RFC2543_INVITE = (
    b"INVITE sip:bob@127.0.0.1:5080 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=a1\r\nTo: <sip:bob@127.0.0.1>\r\n"
    b"Call-ID: old-1\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n"
)


def test_a_request_without_the_magic_cookie_is_matched_by_rfc_2543_rules() -> None:
    bob = layer(BOB)
    bob.receive(RFC2543_INVITE, ALICE, 0.0)
    bob.receive(RFC2543_INVITE, ALICE, 0.5)
    assert len(only(bob, RequestReceived)) == 1
    assert len(bob) == 1


def test_an_rfc_2543_ack_matches_by_the_to_tag_of_the_response_sent() -> None:
    bob = layer(BOB)
    bob.receive(RFC2543_INVITE, ALICE, 0.0)
    (event,) = only(bob, RequestReceived)
    assert isinstance(event, RequestReceived)
    bob.send_response(make_response(event.request, 486, to_tag="b9"), 0.1)
    ack = (RFC2543_INVITE.replace(b"INVITE sip", b"ACK sip").replace(b"7 INVITE", b"7 ACK")
           .replace(b"To: <sip:bob@127.0.0.1>", b"To: <sip:bob@127.0.0.1>;tag=b9"))
    bob.receive(ack, ALICE, 0.2)
    assert bob.state_of(event.transaction_key) is State.CONFIRMED


def test_a_response_is_matched_by_branch_and_cseq_method() -> None:
    pair = Pair()
    key = pair.alice.send_request(request("INVITE"), pair.b_addr, 0.0)
    pair.to_bob(0.0)
    invite = server_request(pair).request
    wrong = make_response(invite, 200, to_tag="b")
    wrong.headers.set("CSeq", "1 CANCEL")
    pair.alice.receive(wrong.to_bytes(), pair.b_addr, 0.1)
    assert pair.alice.state_of(key) is State.CALLING
    (stray,) = only(pair.alice, ResponseReceived)
    assert isinstance(stray, ResponseReceived) and stray.transaction_key is None


def test_a_response_for_someone_elses_via_is_discarded() -> None:
    pair = Pair()
    pair.alice.send_request(request("OPTIONS"), pair.b_addr, 0.0)
    pair.to_bob(0.0)
    response = make_response(server_request(pair).request, 200, to_tag="b")
    response.headers.set("Via", "SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKt0")
    pair.alice.receive(response.to_bytes(), pair.b_addr, 0.1)
    assert [type(e) for e in events(pair.alice)] == [MessageDiscarded]


def test_an_ack_with_a_new_branch_goes_to_the_tu() -> None:
    bob = layer(BOB)
    ack = request("ACK", to_tag="b")
    ack.headers.add("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKack", first=True)
    bob.receive(ack.to_bytes(), ALICE, 0.0)
    (event,) = events(bob)
    assert isinstance(event, AckReceived) and event.transaction_key is None
    assert len(bob) == 0


def test_an_ack_is_never_sent_as_a_transaction() -> None:
    with pytest.raises(LocalProtocolError):
        layer(ALICE).send_request(request("ACK"), BOB, 0.0)


# Malformed input ----------------------------------------------------------------------------


MISSING_CSEQ_NUMBER = (
    b"OPTIONS sip:bob@127.0.0.1:5080 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKbad;rport\r\n"
    b"From: <sip:alice@127.0.0.1>;tag=a1\r\nTo: <sip:bob@127.0.0.1>\r\n"
    b"Call-ID: bad-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


def test_a_malformed_request_is_answered_400_with_the_reason() -> None:
    bob = layer(BOB)
    bob.receive(MISSING_CSEQ_NUMBER, ALICE, 0.0)  # no Max-Forwards
    ((data, dest),) = bob.messages_to_send()
    response = parse_message(data)
    assert isinstance(response, Response)
    assert response.status == 400 and "Max-Forwards" in response.reason
    assert response.call_id == "bad-1" and response.to.tag
    assert dest == ALICE
    assert len(bob) == 0


def test_a_malformed_ack_is_not_answered() -> None:
    bob = layer(BOB)
    ack = MISSING_CSEQ_NUMBER.replace(b"OPTIONS", b"ACK")
    bob.receive(ack, ALICE, 0.0)
    assert bob.messages_to_send() == []
    assert [type(e) for e in events(bob)] == [MessageDiscarded]


def test_garbage_is_dropped_with_an_event() -> None:
    bob = layer(BOB)
    bob.receive(b"\x16\x03\x01\x02\x00 hello", ALICE, 0.0)
    assert bob.messages_to_send() == []
    assert [type(e) for e in events(bob)] == [MessageDiscarded]


def test_a_malformed_response_is_dropped() -> None:
    alice = layer(ALICE)
    alice.receive(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx\r\n\r\n", BOB, 0.0)
    assert alice.messages_to_send() == []
    assert [type(e) for e in events(alice)] == [MessageDiscarded]


# RFC 3665 call flows, as transaction traces -------------------------------------------------


def test_rfc3665_3_1_successful_session_establishment() -> None:
    pair = Pair()
    a, b = pair.alice, pair.bob
    invite_key = a.send_request(request("INVITE"), pair.b_addr, 0.0)  # F1
    pair.to_bob(0.0)
    invite = server_request(pair)
    b.send_response(make_response(invite.request, 180, to_tag="314159"), 0.05)  # F2
    pair.to_alice(0.05)
    b.send_response(make_response(invite.request, 200, to_tag="314159"), 2.0)  # F3
    pair.to_alice(2.0)
    statuses = [e.response.status for e in only(a, ResponseReceived) if isinstance(e, ResponseReceived)]
    assert statuses == [180, 200]
    a.send_ack(request("ACK", to_tag="314159"), pair.b_addr)  # F4
    pair.to_bob(2.01)
    assert len(only(b, AckReceived)) == 1
    bye_key = b.send_request(request("BYE", seq=231, to_tag="a1"), pair.a_addr, 10.0)  # F5 (from Bob)
    pair.to_alice(10.0)
    (bye,) = only(a, RequestReceived)
    assert isinstance(bye, RequestReceived) and bye.request.method == "BYE"
    a.send_response(make_response(bye.request, 200), 10.01)  # F6
    pair.to_bob(10.01)
    (ok,) = only(b, ResponseReceived)
    assert isinstance(ok, ResponseReceived) and ok.response.status == 200
    run_until(a, 100.0)
    run_until(b, 100.0)
    assert a.state_of(invite_key) is State.TERMINATED and b.state_of(bye_key) is State.TERMINATED
    assert len(a) == 0 and len(b) == 0


def test_rfc3665_3_8_unsuccessful_no_answer() -> None:
    pair = Pair()
    a, b = pair.alice, pair.bob
    invite_key = a.send_request(request("INVITE"), pair.b_addr, 0.0)  # F1
    pair.to_bob(0.0)
    invite = server_request(pair)
    b.send_response(make_response(invite.request, 180, to_tag="314159"), 0.05)  # F2
    pair.to_alice(0.05)
    a.cancel(invite_key, 20.0)  # F3
    pair.to_bob(20.0)
    (cancel,) = only(b, RequestReceived)
    assert isinstance(cancel, RequestReceived) and cancel.cancels == invite.transaction_key
    b.send_response(make_response(cancel.request, 200, to_tag="314159"), 20.01)  # F4
    b.send_response(make_response(invite.request, 487, to_tag="314159"), 20.01)  # F5
    pair.to_alice(20.01)
    statuses = [e.response.status for e in only(a, ResponseReceived) if isinstance(e, ResponseReceived)]
    assert statuses == [180, 200, 487]
    (ack,) = pair.to_bob(20.02)  # F6, sent by Alice's INVITE transaction
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert b.state_of(invite.transaction_key) is State.CONFIRMED
    run_until(a, 100.0)
    run_until(b, 100.0)
    assert len(a) == 0 and len(b) == 0


# Random walks over (state, input) -----------------------------------------------------------

_NETWORK = ["1xx", "2xx", "final", "retransmit", "ack", "transport_error"]
_TU = ["tu_1xx", "tu_2xx", "tu_final"]
_STEPS = st.lists(st.tuples(st.sampled_from(_NETWORK + _TU + ["wait"]),
                            st.floats(min_value=0.0, max_value=40.0)), max_size=25)


@settings(max_examples=150, deadline=None)
@given(machine=st.sampled_from(list(Machine)), transport=st.sampled_from(["udp", "tcp"]), steps=_STEPS)
def test_random_walks_raise_nothing_unexpected_and_always_terminate(
        machine: Machine, transport: str, steps: list[tuple[str, float]]) -> None:
    config = TimerConfig(timer_c=60.0)
    pair = Pair(transport, timer_c=60.0)
    method = "INVITE" if machine in (Machine.INVITE_CLIENT, Machine.INVITE_SERVER) else "OPTIONS"
    client_side = machine in (Machine.INVITE_CLIENT, Machine.NON_INVITE_CLIENT)
    client_key = pair.alice.send_request(request(method), pair.b_addr, 0.0)
    (req_bytes, _), = pair.alice.messages_to_send()
    pair.bob.receive(req_bytes, pair.a_addr, 0.0)
    server_event = server_request(pair)
    server_key: TransactionKey = server_event.transaction_key
    lyr = pair.alice if client_side else pair.bob
    peer = pair.b_addr if client_side else pair.a_addr
    assert lyr.state_of(client_key if client_side else server_key) is INITIAL_STATE[machine]
    now = 0.0
    final_at: float | None = 0.0 if client_side else None
    received: list[RequestReceived] = [server_event]
    for step, delay in steps:
        now += delay
        lyr.handle_timer(now)
        if step == "wait":
            continue
        if step == "transport_error":
            lyr.transport_error(peer, now)
        elif client_side and step in ("1xx", "2xx", "final"):
            status = {"1xx": 180, "2xx": 200, "final": 486}[step]
            lyr.receive(make_response(server_event.request, status, to_tag="b").to_bytes(), peer, now)
        elif not client_side and step == "retransmit":
            lyr.receive(req_bytes, peer, now)
        elif not client_side and step == "ack":
            ack = request("ACK", to_tag="b")
            ack.headers.add("Via", str(server_event.request.top_via), first=True)
            lyr.receive(ack.to_bytes(), peer, now)
        elif not client_side and step in _TU:
            status = {"tu_1xx": 180, "tu_2xx": 200, "tu_final": 486}[step]
            state = lyr.state_of(server_key)
            try:
                lyr.send_response(make_response(server_event.request, status, to_tag="b"), now)
            except LocalProtocolError:
                tu_input = {180: Input.SEND_1XX, 200: Input.SEND_2XX, 486: Input.SEND_300_699}[status]
                assert tu_input not in TRANSITIONS[machine][state]
            else:
                if status >= 200:
                    final_at = now
        lyr.messages_to_send()
        received.extend(e for e in events(lyr) if isinstance(e, RequestReceived))
    # A server transaction ends once its TU has answered (and a request that arrives after the
    # transaction ended, as a retransmission can over TCP where Timer J is 0, starts a new one).
    for event in received:
        if lyr.state_of(event.transaction_key) in (State.TRYING, State.PROCEEDING):
            lyr.send_response(make_response(event.request, 486, to_tag="b"), now)
            final_at = now
    if final_at is None:
        final_at = now
    bound = final_at + config.lifetime_bound(machine)
    run_until(lyr, bound)
    assert len(lyr) == 0
    assert lyr.get_timer() is None


def test_tu_inputs_missing_from_a_state_are_refused_not_ignored() -> None:
    for machine in (Machine.INVITE_SERVER, Machine.NON_INVITE_SERVER):
        completed = TRANSITIONS[machine][State.COMPLETED]
        assert not set(completed) & TU_INPUTS


# What a lingering server transaction keeps ---------------------------------------------------


@pytest.mark.parametrize("method", ["OPTIONS", "INVITE"])
def test_server_transaction_lets_go_of_its_request_once_the_final_response_is_sent(method: str) -> None:
    pair = Pair()
    pair.alice.send_request(request(method), pair.b_addr, 0.0)
    ((wire, _),) = pair.alice.messages_to_send()
    pair.bob.receive(wire, pair.a_addr, 0.0)
    event = server_request(pair)
    pair.bob.send_response(make_response(event.request, 486, to_tag="b"), 0.1)
    first = pair.bob.messages_to_send()
    gone = weakref.ref(event.request)
    del event
    gc.collect()
    assert gone() is None
    # and it still answers a retransmission with the same response, to the same place
    pair.bob.receive(wire, pair.a_addr, 0.5)
    assert pair.bob.messages_to_send() == first


def test_legacy_server_transaction_matches_retransmissions_after_its_final_response() -> None:
    # RFC 2543 peer: no magic cookie, so §17.2.3 matches on Request-URI, To tag, Call-ID...
    raw = (b"OPTIONS sip:bob@127.0.0.1:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=old1\r\n"
           b"Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=a1\r\nTo: <sip:bob@127.0.0.1:5080>\r\n"
           b"Call-ID: legacy-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    bob = layer(BOB)
    bob.receive(raw, ALICE, 0.0)
    (event,) = only(bob, RequestReceived)
    assert isinstance(event, RequestReceived)
    bob.send_response(make_response(event.request, 200, to_tag="b"), 0.1)
    first = bob.messages_to_send()
    bob.receive(raw, ALICE, 0.5)
    assert bob.messages_to_send() == first and not only(bob, RequestReceived)
    bob.receive(raw.replace(b"sip:bob@127.0.0.1:5080 SIP", b"sip:carol@127.0.0.1:5080 SIP"), ALICE, 0.6)
    assert only(bob, RequestReceived)  # another Request-URI: not the same transaction
