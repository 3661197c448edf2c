"""Running plans against a recording fake of the phone's SIP and media operations, on a fake clock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, task

from sipmob.mn.executor import Outcome, SignallingFailed, execute
from sipmob.mn.mobility import MOBILE_NODE, CallState, Device, initial_layout, plan_retrieve, plan_transfer
from sipmob.sdp import Origin, SessionDescription, parse

CN_SDP = parse("v=0\r\no=cn 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
               "m=audio 3456 RTP/AVP 0\r\nm=video 3458 RTP/AVP 34\r\n")
MN_SDP = parse("v=0\r\no=mn 7 7 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n"
               "m=audio 4000 RTP/AVP 0\r\nm=video 4002 RTP/AVP 34\r\n")
ORIGIN = Origin("mn", 7, 8, "IN", "IP4", "192.0.2.9")
PHONE = Device("sip:desk@192.0.2.20", "Desk phone", frozenset({"audio-sendrecv"}))
TV = Device("sip:tv@192.0.2.21", "TV", frozenset({"audio-sendrecv", "video-sendrecv"}))


def answer(host: str, audio: int, video: int) -> SessionDescription:
    return parse(f"v=0\r\no=d 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
                 f"m=audio {audio} RTP/AVP 0\r\nm=video {video} RTP/AVP 34\r\n")


class FakeControl:
    """Records every operation; INVITE answers are Deferreds the test fires (or leaves pending)."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.log: list[tuple[Any, ...]] = []
        self.invites: dict[str, defer.Deferred[SessionDescription]] = {}
        self.cn: defer.Deferred[SessionDescription] = defer.Deferred()
        self.offers: list[SessionDescription] = []

    def cn_origin(self) -> Origin:
        return ORIGIN

    def invite_device(self, device: str, offer: SessionDescription) -> defer.Deferred[SessionDescription]:
        self.log.append(("INVITE", device))
        self.invites[device] = defer.Deferred()
        return self.invites[device]

    def cancel_device(self, device: str) -> None:
        self.log.append(("CANCEL", device))

    def ack_device(self, device: str) -> None:
        self.log.append(("ACK", device))

    def bye_device(self, device: str) -> defer.Deferred[Any] | None:
        self.log.append(("BYE", device))
        return defer.succeed(None)

    def reinvite_device(self, device: str, offer: SessionDescription) -> defer.Deferred[SessionDescription]:
        self.log.append(("re-INVITE", device))
        return defer.succeed(offer)

    def reinvite_cn(self, offer: SessionDescription) -> defer.Deferred[SessionDescription]:
        self.log.append(("re-INVITE", "cn"))
        self.offers.append(offer)
        return self.cn

    def ack_cn(self) -> None:
        self.log.append(("ACK", "cn"))

    def start_local_media(self, indices: Sequence[int]) -> None:
        self.log.append(("start", tuple(indices), self.clock.seconds()))

    def stop_local_media(self, indices: Sequence[int]) -> None:
        self.log.append(("stop", tuple(indices), self.clock.seconds()))


def start(plan: Any, timeout: float = 8.0) -> tuple[FakeControl, task.Clock, list[Outcome]]:
    clock = task.Clock()
    control = FakeControl(clock)
    outcome: list[Outcome] = []
    execute(plan, control, clock, device_timeout=timeout).addCallback(outcome.append)
    return control, clock, outcome


def call(layout: Any = None) -> CallState:
    return CallState("c1", "sip:cn@192.0.2.1", CN_SDP, MN_SDP,
                     layout if layout is not None else initial_layout(CN_SDP))


def test_single_device_transfer_runs_figure_2_in_order() -> None:
    control, clock, outcome = start(plan_transfer(call(), [TV], grace=1.0))
    control.invites[TV.uri].callback(answer("192.0.2.21", 4400, 5400))
    control.cn.callback(CN_SDP)
    assert control.log == [("INVITE", TV.uri), ("re-INVITE", "cn"), ("ACK", "cn"), ("ACK", TV.uri)]
    clock.advance(1.0)
    assert control.log[-1] == ("stop", (0, 1), 1.0)
    assert outcome[0].ok and outcome[0].layout == (TV.uri, TV.uri)


def test_cn_is_offered_the_device_answer() -> None:
    control, clock, _ = start(plan_transfer(call(), [TV]))
    control.invites[TV.uri].callback(answer("192.0.2.21", 4400, 5400))
    assert [m.port for m in control.offers[0].media] == [4400, 5400]
    assert str(control.offers[0].connection) == "IN IP4 192.0.2.21"


def test_own_media_keeps_flowing_until_the_grace_period_ends() -> None:
    control, clock, outcome = start(plan_transfer(call(), [TV], grace=1.0))
    control.invites[TV.uri].callback(answer("192.0.2.21", 4400, 5400))
    control.cn.callback(CN_SDP)
    clock.advance(0.9)
    assert not any(entry[0] == "stop" for entry in control.log)
    assert outcome == []


def test_second_device_invited_only_after_the_first_answered() -> None:
    control, clock, _ = start(plan_transfer(call(), [PHONE, TV]))
    assert control.log == [("INVITE", PHONE.uri)]
    control.invites[PHONE.uri].callback(answer("192.0.2.20", 4400, 0))
    assert control.log[-1] == ("INVITE", TV.uri)


def test_rejecting_device_rolls_back_the_one_that_answered() -> None:
    control, clock, outcome = start(plan_transfer(call(), [PHONE, TV]))
    control.invites[PHONE.uri].callback(answer("192.0.2.20", 4400, 0))
    control.invites[TV.uri].errback(SignallingFailed(486, "Busy Here"))
    assert control.log[2:] == [("ACK", PHONE.uri), ("BYE", PHONE.uri)]
    assert not outcome[0].ok
    assert outcome[0].message == ("transfer of call c1 failed: TV rejected it (486 Busy Here); "
                                  "the call stays as it was")
    assert outcome[0].layout == (MOBILE_NODE, MOBILE_NODE)


def test_silent_device_is_cancelled_after_the_timeout() -> None:
    control, clock, outcome = start(plan_transfer(call(), [TV]), timeout=5.0)
    clock.advance(4.9)
    assert outcome == []
    clock.advance(0.2)
    assert control.log == [("INVITE", TV.uri), ("CANCEL", TV.uri)]
    assert "TV did not answer (no answer in 5 s)" in outcome[0].message


def test_cn_rejecting_releases_the_devices_and_never_stops_own_media() -> None:
    control, clock, outcome = start(plan_transfer(call(), [PHONE, TV]))
    control.invites[PHONE.uri].callback(answer("192.0.2.20", 4400, 0))
    control.invites[TV.uri].callback(answer("192.0.2.21", 0, 5400))
    control.cn.errback(SignallingFailed(488, "Not Acceptable Here"))
    clock.advance(10)
    assert control.log[3:] == [("ACK", PHONE.uri), ("BYE", PHONE.uri), ("ACK", TV.uri), ("BYE", TV.uri)]
    assert "refused the new media (488 Not Acceptable Here)" in outcome[0].message
    assert outcome[0].cn_sdp == CN_SDP


def test_retrieval_restarts_own_media_then_byes_the_device() -> None:
    state = CallState("c1", "sip:cn@192.0.2.1", CN_SDP, MN_SDP, (TV.uri, TV.uri),
                      device_sdps={TV.uri: answer("192.0.2.21", 4400, 5400)})
    control, clock, outcome = start(plan_retrieve(state))
    control.cn.callback(CN_SDP)
    assert control.log == [("re-INVITE", "cn"), ("ACK", "cn"), ("start", (0, 1), 0.0), ("BYE", TV.uri)]
    assert [m.port for m in control.offers[0].media] == [4000, 4002]
    assert outcome[0].ok and outcome[0].device_sdps == {}


def test_successful_transfer_remembers_the_device_answer() -> None:
    control, clock, outcome = start(plan_transfer(call(), [TV], grace=0))
    tv_answer = answer("192.0.2.21", 4400, 5400)
    control.invites[TV.uri].callback(tv_answer)
    control.cn.callback(CN_SDP)
    clock.advance(0)
    assert outcome[0].device_sdps == {TV.uri: tv_answer}


def test_cn_answer_with_new_parameters_reinvites_the_device() -> None:
    control, clock, _ = start(plan_transfer(call(), [TV], grace=0))
    control.invites[TV.uri].callback(answer("192.0.2.21", 4400, 5400))
    control.cn.callback(parse(str(CN_SDP).replace("192.0.2.1", "192.0.2.77")))
    assert control.log[3:5] == [("ACK", TV.uri), ("re-INVITE", TV.uri)]
