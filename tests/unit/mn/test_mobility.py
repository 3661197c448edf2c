"""The mobility planner: steps of Figs. 2-3, the display+camera split, retrieval, rollbacks, §6.1 refusal."""

from __future__ import annotations

import pytest

from sipmob.mn.mobility import (
    MOBILE_NODE,
    AckCN,
    AckDevice,
    ByeDevice,
    CallState,
    CancelDevice,
    Device,
    Failure,
    FailureKind,
    Grace,
    InviteDevice,
    Part,
    PlanError,
    ReinviteCN,
    ReinviteDevice,
    Report,
    StartLocalMedia,
    StopLocalMedia,
    check_codecs,
    initial_layout,
    plan_retrieve,
    plan_split,
    plan_transfer,
)
from sipmob.sdp import Direction, DuplexSplit, Origin, parse

CN_SDP = parse("""v=0
o=cn 100 100 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 3456 RTP/AVP 0 8
m=video 3458 RTP/AVP 34
""")

MN_SDP = parse("""v=0
o=mn 7 7 IN IP4 192.0.2.9
s=-
c=IN IP4 192.0.2.9
t=0 0
m=audio 4000 RTP/AVP 0
m=video 4002 RTP/AVP 34
""")

ORIGIN = Origin("mn", 7, 8, "IN", "IP4", "192.0.2.9")

PHONE = Device("sip:deskphone@192.0.2.20", "Desk phone", frozenset({"audio-sendrecv"}), ("PCMU",))
TV = Device("sip:tv@192.0.2.21", "TV", frozenset({"video-recvonly", "audio-recvonly"}), ("PCMU",), ("H263",))
AV = Device("sip:av@192.0.2.22", "AV set", frozenset({"audio-sendrecv", "video-sendrecv"}),
            ("PCMA", "PCMU"), ("H263",))
CAMERA = Device("sip:cam@192.0.2.23", "Camera", frozenset({"video-sendonly"}), (), ("H263",))
OPUS_ONLY = Device("sip:op@192.0.2.24", "Opus speaker", frozenset({"audio-sendrecv"}), ("opus",))


def call(layout: tuple[object, ...] | None = None, **kw: object) -> CallState:
    return CallState("c1", "sip:cn@192.0.2.1", CN_SDP, MN_SDP,
                     layout if layout is not None else initial_layout(CN_SDP), **kw)  # type: ignore[arg-type]


def device_answer(host: str, audio_port: int, video_port: int, video_dir: str = "") -> object:
    return parse(f"""v=0
o=dev 1 1 IN IP4 {host}
s=-
c=IN IP4 {host}
t=0 0
m=audio {audio_port} RTP/AVP 0
m=video {video_port} RTP/AVP 34
{video_dir}""")


def kinds(steps: tuple[object, ...]) -> list[str]:
    return [type(s).__name__ for s in steps]


# Fig. 2: one device -------------------------------------------------------------------------

def test_single_device_transfer_follows_figure_2() -> None:
    plan = plan_transfer(call(), [AV])
    assert kinds(plan.steps) == ["InviteDevice", "ReinviteCN", "AckCN", "AckDevice", "Grace",
                                 "StopLocalMedia", "Report"]
    assert plan.steps[3] == AckDevice(AV.uri)
    assert plan.layout == (AV.uri, AV.uri)


def test_device_is_invited_with_the_cn_parameters_not_an_empty_offer() -> None:
    invite = plan_transfer(call(), [AV]).steps[0]
    assert isinstance(invite, InviteDevice)
    assert invite.offer.connection_for(0) == CN_SDP.connection_for(0)
    assert [m.port for m in invite.offer.media] == [3456, 3458]


def test_grace_period_comes_before_stopping_own_media() -> None:
    plan = plan_transfer(call(), [AV], grace=1.5)
    grace = plan.steps.index(Grace(1.5))
    assert plan.steps[grace + 1] == StopLocalMedia((0, 1))
    assert plan.steps.index(AckCN()) < grace


def test_transfer_of_audio_only_leaves_video_on_the_phone() -> None:
    plan = plan_transfer(call(), [PHONE], "audio")
    assert plan.layout == (PHONE.uri, MOBILE_NODE)
    assert StopLocalMedia((0,)) in plan.steps
    invite = plan.steps[0]
    assert isinstance(invite, InviteDevice)
    assert [m.port for m in invite.offer.media] == [3456, 0]


def test_cn_offer_stitches_device_answer_with_own_media() -> None:
    plan = plan_transfer(call(), [PHONE], "audio")
    offer = plan.cn_offer({PHONE.uri: device_answer("192.0.2.20", 5000, 0)}, ORIGIN)
    assert offer.connection_for(0) is not None and offer.connection_for(0).address == "192.0.2.20"
    assert offer.media[0].port == 5000
    assert offer.connection_for(1) is not None and offer.connection_for(1).address == "192.0.2.9"
    assert offer.media[1].port == 4002


def test_cn_offer_without_a_device_answer_is_an_error() -> None:
    plan = plan_transfer(call(), [AV])
    with pytest.raises(PlanError, match="no answer from AV set"):
        plan.cn_offer({}, ORIGIN)


# Fig. 3: two devices ------------------------------------------------------------------------

def test_two_devices_are_invited_in_order_then_the_cn_once() -> None:
    plan = plan_transfer(call(), [PHONE, AV])
    assert kinds(plan.steps)[:6] == ["InviteDevice", "InviteDevice", "ReinviteCN", "AckCN",
                                     "AckDevice", "AckDevice"]
    assert plan.invited == (PHONE.uri, AV.uri)
    assert plan.layout == (PHONE.uri, AV.uri)


def test_each_device_is_offered_only_its_own_stream() -> None:
    plan = plan_transfer(call(), [PHONE, AV])
    offers = {s.device: s.offer for s in plan.steps if isinstance(s, InviteDevice)}
    assert [m.port for m in offers[PHONE.uri].media] == [3456, 0]
    assert [m.port for m in offers[AV.uri].media] == [0, 3458]


def test_cn_offer_of_two_devices_has_a_connection_per_m_line() -> None:
    plan = plan_transfer(call(), [PHONE, AV])
    offer = plan.cn_offer({PHONE.uri: device_answer("192.0.2.20", 4400, 0),
                           AV.uri: device_answer("192.0.2.22", 0, 5400)}, ORIGIN)
    assert [(str(offer.connection_for(i)), m.port) for i, m in enumerate(offer.media)] == [
        ("IN IP4 192.0.2.20", 4400), ("IN IP4 192.0.2.22", 5400)]


def test_stream_goes_to_first_listed_device_that_handles_it() -> None:
    assert plan_transfer(call(), [AV, PHONE]).layout == (AV.uri, AV.uri)


def test_one_way_device_cannot_take_a_two_way_stream() -> None:
    with pytest.raises(PlanError, match="none of TV can play and capture audio"):
        plan_transfer(call(), [TV], "audio")


def test_device_without_media_attribute_is_not_refused() -> None:
    plain = Device("sip:plain@192.0.2.30", "plain")
    assert plan_transfer(call(), [plain]).layout == (plain.uri, plain.uri)


# Split: display + camera ----------------------------------------------------------------------

def test_split_sends_video_out_to_display_and_in_from_camera() -> None:
    plan = plan_split(call(), TV, CAMERA)
    assert plan.layout == (MOBILE_NODE, DuplexSplit(TV.uri, CAMERA.uri))
    offers = {s.device: s.offer for s in plan.steps if isinstance(s, InviteDevice)}
    assert offers[TV.uri].direction(1) is Direction.SENDONLY
    assert offers[CAMERA.uri].direction(1) is Direction.RECVONLY
    assert plan.parts == (Part(0, MOBILE_NODE), Part(1, TV.uri), Part(1, CAMERA.uri))


def test_split_stitches_display_and_camera_into_one_sendrecv_video_line() -> None:
    plan = plan_split(call(), TV, CAMERA)
    offer = plan.cn_offer({TV.uri: device_answer("192.0.2.21", 0, 8900, "a=recvonly"),
                           CAMERA.uri: device_answer("192.0.2.23", 0, 8800, "a=sendonly")}, ORIGIN)
    assert offer.media[1].port == 8900
    assert offer.direction(1) is Direction.SENDRECV
    assert offer.media[0].port == 4000


def test_split_with_audio_device_moves_audio_too() -> None:
    plan = plan_split(call(), TV, CAMERA, PHONE)
    assert plan.layout == (PHONE.uri, DuplexSplit(TV.uri, CAMERA.uri))
    assert plan.invited == (PHONE.uri, TV.uri, CAMERA.uri)


def test_split_refuses_a_camera_that_cannot_capture() -> None:
    with pytest.raises(PlanError, match="Desk phone cannot capture video"):
        plan_split(call(), TV, PHONE)


def test_split_refuses_a_display_that_cannot_show() -> None:
    with pytest.raises(PlanError, match="Camera cannot show video"):
        plan_split(call(), CAMERA, TV)


def test_split_refuses_the_same_device_twice() -> None:
    with pytest.raises(PlanError, match="two devices"):
        plan_split(call(), AV, AV)


# Retrieval --------------------------------------------------------------------------------------

def test_retrieve_reinvites_cn_then_byes_devices() -> None:
    state = call((PHONE.uri, AV.uri), device_sdps={})
    plan = plan_retrieve(state)
    assert kinds(plan.steps) == ["ReinviteCN", "AckCN", "StartLocalMedia", "ByeDevice", "ByeDevice",
                                 "Report"]
    assert plan.steps[2] == StartLocalMedia((0, 1))
    assert plan.invited == ()
    assert plan.layout == (MOBILE_NODE, MOBILE_NODE)


def test_retrieve_offers_our_own_parameters() -> None:
    plan = plan_retrieve(call((AV.uri, AV.uri)))
    offer = plan.cn_offer({}, ORIGIN)
    assert [m.port for m in offer.media] == [4000, 4002]
    assert str(offer.connection_for(0)) == "IN IP4 192.0.2.9"


def test_partial_retrieve_reinvites_the_device_that_keeps_a_stream() -> None:
    state = call((AV.uri, AV.uri), device_sdps={AV.uri: device_answer("192.0.2.22", 4400, 5400)})
    plan = plan_retrieve(state, "audio")
    reinvite = [s for s in plan.steps if isinstance(s, ReinviteDevice)]
    assert [s.device for s in reinvite] == [AV.uri]
    assert [m.port for m in reinvite[0].offer.media] == [0, 3458]
    assert ByeDevice(AV.uri) not in plan.steps
    offer = plan.cn_offer({}, ORIGIN)
    assert [m.port for m in offer.media] == [4000, 5400]


def test_retrieve_of_split_video_byes_display_and_camera() -> None:
    plan = plan_retrieve(call((MOBILE_NODE, DuplexSplit(TV.uri, CAMERA.uri))))
    assert [s.device for s in plan.steps if isinstance(s, ByeDevice)] == [TV.uri, CAMERA.uri]


def test_retrieve_when_everything_is_home_is_refused() -> None:
    with pytest.raises(PlanError, match="already on this phone"):
        plan_retrieve(call())


def test_transfer_away_from_one_device_to_another_byes_the_old_one() -> None:
    plan = plan_transfer(call((PHONE.uri, MOBILE_NODE)), [AV], "audio")
    assert plan.steps[-2] == ByeDevice(PHONE.uri)
    assert not any(isinstance(s, Grace | StopLocalMedia) for s in plan.steps)


def test_device_already_carrying_another_stream_is_refused() -> None:
    with pytest.raises(PlanError, match="already carries the video"):
        plan_transfer(call((MOBILE_NODE, AV.uri)), [AV], "audio")


# Rollbacks ------------------------------------------------------------------------------------

def test_every_invited_device_and_the_cn_are_failure_points() -> None:
    plan = plan_transfer(call(), [PHONE, AV])
    assert plan.failure_points == (
        Failure(FailureKind.DEVICE_REJECTED, PHONE.uri), Failure(FailureKind.DEVICE_NO_ANSWER, PHONE.uri),
        Failure(FailureKind.DEVICE_REJECTED, AV.uri), Failure(FailureKind.DEVICE_NO_ANSWER, AV.uri),
        Failure(FailureKind.CN_REJECTED))


def test_first_device_rejecting_needs_nothing_but_a_report() -> None:
    plan = plan_transfer(call(), [PHONE, AV])
    steps = plan.rollback(Failure(FailureKind.DEVICE_REJECTED, PHONE.uri), "486 Busy Here")
    assert steps == (Report("transfer of call c1 failed: Desk phone rejected it (486 Busy Here); "
                            "the call stays as it was"),)


def test_second_device_rejecting_releases_the_first() -> None:
    plan = plan_transfer(call(), [PHONE, AV])
    steps = plan.rollback(Failure(FailureKind.DEVICE_REJECTED, AV.uri), "603 Decline")
    assert steps[:2] == (AckDevice(PHONE.uri), ByeDevice(PHONE.uri))
    assert isinstance(steps[-1], Report) and "AV set rejected it (603 Decline)" in steps[-1].message


def test_device_not_answering_is_cancelled_and_earlier_ones_released() -> None:
    plan = plan_transfer(call(), [PHONE, AV])
    steps = plan.rollback(Failure(FailureKind.DEVICE_NO_ANSWER, AV.uri))
    assert steps[:3] == (CancelDevice(AV.uri), AckDevice(PHONE.uri), ByeDevice(PHONE.uri))
    assert isinstance(steps[-1], Report) and "AV set did not answer;" in steps[-1].message


def test_cn_rejecting_releases_every_device_and_keeps_own_media() -> None:
    plan = plan_transfer(call(), [PHONE, AV])
    steps = plan.rollback(Failure(FailureKind.CN_REJECTED), "488 Not Acceptable Here")
    assert steps[:4] == (AckDevice(PHONE.uri), ByeDevice(PHONE.uri), AckDevice(AV.uri), ByeDevice(AV.uri))
    assert not any(isinstance(s, StopLocalMedia | ReinviteCN) for s in steps)
    assert isinstance(steps[-1], Report)
    assert "sip:cn@192.0.2.1 refused the new media (488 Not Acceptable Here)" in steps[-1].message


def test_cn_rejecting_a_retrieval_changes_nothing() -> None:
    plan = plan_retrieve(call((AV.uri, AV.uri)))
    steps = plan.rollback(Failure(FailureKind.CN_REJECTED))
    assert kinds(steps) == ["Report"]


def test_rollback_of_a_device_not_in_the_plan_is_an_error() -> None:
    plan = plan_transfer(call(), [PHONE], "audio")
    with pytest.raises(ValueError, match="not a failure point"):
        plan.rollback(Failure(FailureKind.DEVICE_REJECTED, AV.uri))


# Capability check (§6.1) ----------------------------------------------------------------------

def test_no_common_codec_refuses_naming_both_sides() -> None:
    with pytest.raises(PlanError) as info:
        plan_transfer(call(), [OPUS_ONLY], "audio")
    assert str(info.value) == ("no common audio codec: sip:cn@192.0.2.1 has PCMU/8000, PCMA/8000; "
                               "Opus speaker has opus/48000/2")


def test_cn_options_answer_is_preferred_to_its_current_description() -> None:
    caps = parse("v=0\r\no=cn 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
                 "m=audio 0 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n")
    plan = plan_transfer(call(), [OPUS_ONLY], "audio", cn_capabilities=caps)
    assert plan.layout[0] == OPUS_ONLY.uri


def test_codec_names_match_case_insensitively() -> None:
    lower = Device("sip:l@192.0.2.31", "lower", frozenset(), ("pcma",))
    assert check_codecs(call(), {0: (lower,)}) is None


def test_device_without_codec_list_is_not_refused() -> None:
    assert check_codecs(call(), {0: (Device("sip:x@192.0.2.32", "x"),)}) is None


def test_video_codec_mismatch_names_video() -> None:
    h264 = Device("sip:h@192.0.2.33", "H264 TV", frozenset({"video-sendrecv"}), (), ("H264",))
    with pytest.raises(PlanError, match="no common video codec: .* has H263/90000; H264 TV has H264/90000"):
        plan_transfer(call(), [h264], "video")


# Answers that differ from the offer -------------------------------------------------------------

def test_cn_answer_with_new_address_reinvites_the_device() -> None:
    plan = plan_transfer(call(), [AV])
    moved = parse(str(CN_SDP).replace("192.0.2.1", "192.0.2.99"))
    assert [u.device for u in plan.device_updates(moved)] == [AV.uri]


def test_cn_answer_unchanged_needs_no_device_update() -> None:
    plan = plan_transfer(call(), [AV])
    assert plan.device_updates(CN_SDP) == ()


def test_layout_must_cover_every_m_line() -> None:
    with pytest.raises(ValueError, match="layout has 1 entries for 2 m-lines"):
        call((MOBILE_NODE,))


def test_disabled_m_line_stays_nowhere() -> None:
    sdp = CN_SDP.with_port(1, 0)
    assert initial_layout(sdp) == (MOBILE_NODE, None)
    state = CallState("c2", "sip:cn@192.0.2.1", sdp, MN_SDP, initial_layout(sdp))
    assert plan_transfer(state, [AV]).layout == (AV.uri, None)
