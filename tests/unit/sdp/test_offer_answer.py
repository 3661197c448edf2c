"""RFC 3264 offer/answer: answers, negotiation results, hold, and one dialog's version bookkeeping.

The RFC 4317 rows are replayed: the offerer's description goes in, our `answer` (or our
`OfferAnswerState`) must produce the answerer's description as the RFC prints it.
"""

from __future__ import annotations

import dataclasses

import pytest

from sipmob.sdp import (
    Attribute,
    Codec,
    Direction,
    LocalCapabilities,
    MediaCapability,
    OfferAnswerError,
    OfferAnswerState,
    Origin,
    SessionDescription,
    answer,
    common_codecs,
    hold,
    negotiate,
    no_common_codec,
    parse,
    puts_on_hold,
    resume,
)

ALICE = Origin("alice", 2890844526, 2890844526, "IN", "IP4", "host.atlanta.example.com")
BOB = Origin("bob", 2808844564, 2808844564, "IN", "IP4", "host.biloxi.example.com")
PCMU, PCMA, ILBC = Codec("PCMU", 8000), Codec("PCMA", 8000), Codec("iLBC", 8000)
H261, MPV = Codec("H261", 90000), Codec("MPV", 90000)
TEL = Codec("telephone-event", 8000)


def sdp(text: str) -> SessionDescription:
    return parse(text.strip("\n"))


def caps(audio: tuple[Codec, ...] = (), video: tuple[Codec, ...] = (), **kw: Direction) -> LocalCapabilities:
    media = []
    if audio:
        media.append(MediaCapability("audio", audio, kw.get("audio_direction", Direction.SENDRECV)))
    if video:
        media.append(MediaCapability("video", video, kw.get("video_direction", Direction.SENDRECV)))
    return LocalCapabilities(tuple(media))


def bob_answers(offer: SessionDescription, local: LocalCapabilities, ports: dict[str, int] | dict[int, int],
                address: str = "host.biloxi.example.com") -> SessionDescription:
    # Through the wire format, as the peer would see it.
    return parse(answer(offer, local, origin=BOB, connection_address=address, ports=ports).serialise())


OFFER_AV = sdp("""
v=0
o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com
s=
c=IN IP4 host.atlanta.example.com
t=0 0
m=audio 49170 RTP/AVP 0 8 97
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:97 iLBC/8000
m=video 51372 RTP/AVP 31 32
a=rtpmap:31 H261/90000
a=rtpmap:32 MPV/90000
""")


# --- RFC 4317 rows ----------------------------------------------------------------------------------

def test_rfc4317_2_1_one_codec_accepted_per_stream() -> None:
    expected = sdp("""
v=0
o=bob 2808844564 2808844564 IN IP4 host.biloxi.example.com
s=
c=IN IP4 host.biloxi.example.com
t=0 0
m=audio 49174 RTP/AVP 0
a=rtpmap:0 PCMU/8000
m=video 49170 RTP/AVP 32
a=rtpmap:32 MPV/90000
""")
    assert bob_answers(OFFER_AV, caps((PCMU,), (MPV,)), {"audio": 49174, "video": 49170}) == expected


def test_rfc4317_2_2_video_rejected_then_codec_narrowed_with_versions_bumped() -> None:
    alice, bob = OfferAnswerState(ALICE), OfferAnswerState(BOB)
    bob_caps = caps((PCMU, PCMA))
    bob.receive_offer(alice.create_offer(OFFER_AV))
    first, _ = bob.create_answer(bob_answers(OFFER_AV, bob_caps, {"audio": 49172}))
    assert first == sdp("""
v=0
o=bob 2808844564 2808844564 IN IP4 host.biloxi.example.com
s=
c=IN IP4 host.biloxi.example.com
t=0 0
m=audio 49172 RTP/AVP 0 8
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
m=video 0 RTP/AVP 31
a=rtpmap:31 H261/90000
""")
    alice.receive_answer(first)
    narrowed = OFFER_AV.with_media(0, dataclasses.replace(
        OFFER_AV.media[0], port=51372, formats=("0",), attributes=(Attribute("rtpmap", "0 PCMU/8000"),)))
    narrowed = narrowed.with_media(1, first.media[1])
    second_offer = alice.create_offer(narrowed)
    assert second_offer.origin.sess_version == 2890844527
    bob.receive_offer(second_offer)
    second, _ = bob.create_answer(bob_answers(second_offer, bob_caps, {"audio": 49172}))
    assert second.origin.sess_version == 2808844565
    assert second.media[0].formats == ("0",) and second.media[1].port == 0


def test_rfc4317_2_3_answer_renumbering_a_dynamic_type_still_negotiates() -> None:
    rfc_answer = sdp("""
v=0
o=bob 2808844564 2808844564 IN IP4 host.biloxi.example.com
s=
c=IN IP4 host.biloxi.example.com
t=0 0
m=audio 49172 RTP/AVP 99
a=rtpmap:99 iLBC/8000
m=video 51374 RTP/AVP 31
a=rtpmap:31 H261/90000
""")
    audio = negotiate(OFFER_AV, rfc_answer).streams[0]
    assert audio.accepted and audio.primary is not None
    assert (audio.primary.codec.encoding, audio.primary.send_payload_type,
            audio.primary.recv_payload_type) == ("iLBC", 99, 97)


def test_rfc4317_2_3_our_answer_keeps_the_offers_payload_number() -> None:
    ours = bob_answers(OFFER_AV, caps((ILBC,), (H261,)), {"audio": 49172, "video": 51374})
    assert ours.media[0].formats == ("97",)
    assert ours.media[0].attributes == (Attribute("rtpmap", "97 iLBC/8000"),)


OFFER_TWO_AUDIO = sdp("""
v=0
o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com
s=
c=IN IP4 host.atlanta.example.com
t=0 0
m=audio 49170 RTP/AVP 0 97
a=rtpmap:0 PCMU/8000
a=rtpmap:97 iLBC/8000
m=audio 49172 RTP/AVP 98
a=rtpmap:98 telephone-event/8000
a=sendonly
""")


def test_rfc4317_2_4_two_audio_streams_sendonly_answered_recvonly() -> None:
    expected = sdp("""
v=0
o=bob 2808844564 2808844564 IN IP4 host.biloxi.example.com
s=
c=IN IP4 host.biloxi.example.com
t=0 0
m=audio 49172 RTP/AVP 97
a=rtpmap:97 iLBC/8000
m=audio 49174 RTP/AVP 98
a=rtpmap:98 telephone-event/8000
a=recvonly
""")
    assert bob_answers(OFFER_TWO_AUDIO, caps((ILBC, TEL)), {0: 49172, 1: 49174}) == expected


def test_rfc4317_2_5_identical_answer_keeps_its_version() -> None:
    offer = sdp("""
v=0
o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com
s=
c=IN IP4 host.atlanta.example.com
t=0 0
m=audio 49170 RTP/AVP 97
a=rtpmap:97 iLBC/8000
m=video 51372 RTP/AVP 31
a=rtpmap:31 H261/90000
""")
    bob_moves = sdp("""
v=0
o=bob 2808844564 2808844565 IN IP4 host.biloxi.example.com
s=
c=IN IP4 newhost.biloxi.example.com
t=0 0
m=audio 49178 RTP/AVP 97
a=rtpmap:97 iLBC/8000
m=video 49188 RTP/AVP 31
a=rtpmap:31 H261/90000
""")
    alice = OfferAnswerState(ALICE)
    sent = alice.create_offer(offer)
    alice.receive_answer(bob_answers(sent, caps((ILBC,), (H261,)), {"audio": 49174, "video": 49170}))
    alice.receive_offer(bob_moves)
    second, negotiated = alice.create_answer(offer)
    assert second == sent and second.origin.sess_version == 2890844526
    assert negotiated.streams[0].remote_address == "newhost.biloxi.example.com"


def test_rfc4317_2_6_first_stream_declined_second_accepted() -> None:
    offer = sdp("""
v=0
o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com
s=
c=IN IP4 host.atlanta.example.com
t=0 0
m=audio 49170 RTP/AVP 0
a=rtpmap:0 PCMU/8000
m=audio 51372 RTP/AVP 97 101
a=rtpmap:97 iLBC/8000
a=rtpmap:101 telephone-event/8000
""")
    expected = sdp("""
v=0
o=bob 2808844564 2808844564 IN IP4 host.biloxi.example.com
s=
c=IN IP4 host.biloxi.example.com
t=0 0
m=audio 0 RTP/AVP 0
a=rtpmap:0 PCMU/8000
m=audio 49170 RTP/AVP 97 101
a=rtpmap:97 iLBC/8000
a=rtpmap:101 telephone-event/8000
""")
    assert bob_answers(offer, caps((ILBC, TEL)), {1: 49170}) == expected


OFFER_AUDIO = sdp("""
v=0
o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com
s=
c=IN IP4 host.atlanta.example.com
t=0 0
m=audio 49170 RTP/AVP 0 97
a=rtpmap:0 PCMU/8000
a=rtpmap:97 iLBC/8000
""")


def test_rfc4317_3_1_answerer_holds_then_resumes_with_a_new_version() -> None:
    bob = OfferAnswerState(BOB)
    bob.receive_offer(OFFER_AUDIO)
    held = hold(bob_answers(OFFER_AUDIO, caps((ILBC,)), {"audio": 49172}, "placeholder.biloxi.example.com"))
    first, negotiated = bob.create_answer(held)
    assert first.media[0].attributes == (Attribute("rtpmap", "97 iLBC/8000"), Attribute("sendonly"))
    assert negotiated.streams[0].direction is Direction.SENDONLY
    unheld = resume(first).with_connection("host.biloxi.example.com").with_port(0, 49170)
    second = bob.create_offer(unheld)
    assert second.origin.sess_version == 2808844565
    assert second.direction(0) is Direction.SENDRECV


def test_rfc4317_4_2_video_added_by_re_offer() -> None:
    alice, bob = OfferAnswerState(ALICE), OfferAnswerState(BOB)
    bob_caps = caps((PCMU,), (H261,))
    audio_only = sdp("""
v=0
o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com
s=
c=IN IP4 host.atlanta.example.com
t=0 0
m=audio 49170 RTP/AVP 0
a=rtpmap:0 PCMU/8000
""")
    bob.receive_offer(alice.create_offer(audio_only))
    alice.receive_answer(bob.create_answer(bob_answers(audio_only, bob_caps, {"audio": 49172}))[0])
    with_video = dataclasses.replace(audio_only, media=(*audio_only.media, parse(
        "v=0\no=- 0 0 IN IP4 h\ns=-\nc=IN IP4 h\nt=0 0\nm=video 49172 RTP/AVP 31\n"
        "a=rtpmap:31 H261/90000\n").media[0]))
    offer2 = alice.create_offer(with_video)
    bob.receive_offer(offer2)
    answer2, negotiated = bob.create_answer(bob_answers(offer2, bob_caps, {"audio": 49172, "video": 49168}))
    assert answer2 == sdp("""
v=0
o=bob 2808844564 2808844565 IN IP4 host.biloxi.example.com
s=
c=IN IP4 host.biloxi.example.com
t=0 0
m=audio 49172 RTP/AVP 0
a=rtpmap:0 PCMU/8000
m=video 49168 RTP/AVP 31
a=rtpmap:31 H261/90000
""")
    assert [s.accepted for s in negotiated.streams] == [True, True]


def test_rfc4317_4_3_video_disabled_by_port_zero_is_answered_port_zero() -> None:
    offer = OFFER_AV.with_port(1, 0)
    answered = bob_answers(offer, caps((PCMU,), (H261,)), {"audio": 49170, "video": 49174})
    assert answered.media[1].port == 0
    assert not negotiate(offer, answered).streams[1].accepted


def test_rfc4317_5_2_offer_at_0000_means_we_cannot_send() -> None:
    offer = OFFER_AUDIO.with_connection("0.0.0.0")
    answered = bob_answers(offer, caps((ILBC,)), {"audio": 49170})
    stream = negotiate(offer, answered, local="answerer").streams[0]
    assert stream.accepted and stream.direction is Direction.RECVONLY


# --- answer rules ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("offered", "answered"), [
    (Direction.SENDRECV, Direction.SENDRECV), (Direction.SENDONLY, Direction.RECVONLY),
    (Direction.RECVONLY, Direction.SENDONLY), (Direction.INACTIVE, Direction.INACTIVE),
])
def test_direction_answered_per_rfc3264_6_1(offered: Direction, answered: Direction) -> None:
    result = answer(OFFER_AUDIO.with_direction(offered), caps((PCMU,)), origin=BOB,
                    connection_address="192.0.2.2", ports={"audio": 4000})
    assert result.direction(0) is answered


def test_receive_only_device_answers_recvonly_to_sendrecv() -> None:
    display = caps(video=(H261,), video_direction=Direction.RECVONLY)
    result = answer(OFFER_AV, display, origin=BOB, connection_address="192.0.2.2", ports={"video": 5000})
    assert (result.media[0].port, result.direction(1)) == (0, Direction.RECVONLY)


def test_session_level_direction_of_the_offer_is_answered() -> None:
    offer = dataclasses.replace(OFFER_AUDIO, attributes=(Attribute("sendonly"),))
    result = answer(offer, caps((PCMU,)), origin=BOB, connection_address="192.0.2.2", ports={"audio": 4000})
    assert result.direction(0) is Direction.RECVONLY


def test_answer_keeps_offer_order_by_default_and_local_order_when_asked() -> None:
    local = caps((ILBC, PCMU))
    kwargs = {"origin": BOB, "connection_address": "192.0.2.2", "ports": {"audio": 4000}}
    assert answer(OFFER_AUDIO, local, **kwargs).media[0].formats == ("0", "97")  # type: ignore[arg-type]
    assert answer(OFFER_AUDIO, local, prefer="local", **kwargs).media[0].formats == ("97", "0")  # type: ignore[arg-type]


def test_telephone_event_answered_with_common_events() -> None:
    offer = sdp("""
v=0
o=- 1 1 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 4000 RTP/AVP 0 101
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
""")
    local = caps((PCMU, Codec("telephone-event", 8000, fmtp="0-11,16")))
    result = answer(offer, local, origin=BOB, connection_address="192.0.2.2", ports={"audio": 5000})
    assert result.media[0].fmtp(101) == "0-11"


def test_h264_packetization_modes_do_not_match() -> None:
    mode0 = Codec("H264", 90000, fmtp="profile-level-id=42e01f;packetization-mode=0")
    mode1 = Codec("H264", 90000, fmtp="profile-level-id=42e01f;packetization-mode=1")
    assert not mode0.matches(mode1)
    assert mode1.matches(Codec("h264", 90000, fmtp="packetization-mode=1;profile-level-id=42001f"))


def test_only_telephone_event_in_common_rejects_the_stream() -> None:
    offer = OFFER_TWO_AUDIO.with_media(0, dataclasses.replace(
        OFFER_TWO_AUDIO.media[0], formats=("0", "98"),
        attributes=(Attribute("rtpmap", "98 telephone-event/8000"),)))
    result = answer(offer, caps((Codec("G722", 8000), TEL)), origin=BOB, connection_address="192.0.2.2",
                    ports={"audio": 5000})
    assert result.media[0].port == 0


def test_rejected_stream_keeps_a_valid_format_list() -> None:
    result = answer(OFFER_AV, caps((PCMU,)), origin=BOB, connection_address="192.0.2.2",
                    ports={"audio": 5000})
    reparsed = parse(result.to_bytes())
    assert (reparsed.media[1].port, reparsed.media[1].formats) == (0, ("31",))


def test_unknown_media_rejected_with_its_formats() -> None:
    offer = parse(OFFER_AUDIO.serialise() + "m=application 9000 udp wb\r\na=orient:portrait\r\n")
    result = answer(offer, caps((PCMU,)), origin=BOB, connection_address="192.0.2.2", ports={"audio": 5000})
    rejected = result.media[1]
    assert (rejected.media, rejected.port, rejected.formats) == ("application", 0, ("wb",))


def test_capability_attributes_carried_verbatim_into_the_answer() -> None:
    local = LocalCapabilities((MediaCapability("audio", (PCMU,), attributes=(
        Attribute("ptime", "20"), Attribute("x-room", "kitchen speaker"))),))
    result = answer(OFFER_AUDIO, local, origin=BOB, connection_address="192.0.2.2", ports={"audio": 5000})
    assert result.media[0].attributes[-2:] == (
        Attribute("ptime", "20"), Attribute("x-room", "kitchen speaker"))


def test_mid_echoed_in_the_answer() -> None:
    offer = OFFER_AUDIO.with_media(0, OFFER_AUDIO.media[0].with_attributes(
        (*OFFER_AUDIO.media[0].attributes, Attribute("mid", "audio1"))))
    result = answer(offer, caps((PCMU,)), origin=BOB, connection_address="::1", ports={"audio": 5000})
    assert result.media[0].mid == "audio1"
    assert result.connection is not None and result.connection.addrtype == "IP6"


def test_missing_port_for_an_acceptable_stream_is_an_error() -> None:
    with pytest.raises(OfferAnswerError, match="no local port given for m-line 0"):
        answer(OFFER_AUDIO, caps((PCMU,)), origin=BOB, connection_address="192.0.2.2", ports={"video": 1})


# --- negotiate --------------------------------------------------------------------------------------

def test_negotiate_gives_remote_address_port_and_rtcp() -> None:
    answered = bob_answers(OFFER_AV, caps((PCMU,), (MPV,)), {"audio": 49174, "video": 49170})
    answered = answered.with_media(0, answered.media[0].with_attributes(
        (*answered.media[0].attributes, Attribute("rtcp", "50000 IN IP4 192.0.2.50"))))
    audio, video = negotiate(OFFER_AV, answered).streams
    assert (audio.remote_address, audio.remote_port) == ("host.biloxi.example.com", 49174)
    assert (audio.remote_rtcp_address, audio.remote_rtcp_port) == ("192.0.2.50", 50000)
    assert (video.remote_rtcp_address, video.remote_rtcp_port) == ("host.biloxi.example.com", 49171)


def test_negotiate_from_the_answerers_side_points_at_the_offerer() -> None:
    answered = bob_answers(OFFER_AV, caps((PCMU,), (MPV,)), {"audio": 49174, "video": 49170})
    audio = negotiate(OFFER_AV, answered, local="answerer").streams[0]
    assert (audio.remote_address, audio.remote_port) == ("host.atlanta.example.com", 49170)


def test_negotiate_direction_for_the_offerer_of_a_sendonly_stream() -> None:
    answered = bob_answers(OFFER_TWO_AUDIO, caps((ILBC, TEL)), {0: 49172, 1: 49174})
    assert [s.direction for s in negotiate(OFFER_TWO_AUDIO, answered).streams] == [
        Direction.SENDRECV, Direction.SENDONLY]


def test_negotiate_rejects_an_answer_with_a_different_m_line_count() -> None:
    answered = bob_answers(OFFER_AV, caps((PCMU,), (MPV,)), {"audio": 1, "video": 2})
    with pytest.raises(OfferAnswerError, match="same number"):
        negotiate(OFFER_AV, dataclasses.replace(answered, media=answered.media[:1]))


# --- common codecs ------------------------------------------------------------------------------------

def test_common_codecs_in_the_first_sides_order() -> None:
    assert common_codecs(OFFER_AV.media[0], [ILBC, Codec("pcmu", 8000)]) == (PCMU, ILBC)


def test_no_common_codec_names_both_sides() -> None:
    message = no_common_codec(OFFER_AV.media[0], [Codec("opus", 48000, 2), TEL],
                              a_name="the caller", b_name="the kitchen speaker")
    assert message == ("no common audio codec: the caller has PCMU/8000, PCMA/8000, iLBC/8000; "
                       "the kitchen speaker has opus/48000/2")


def test_no_common_codec_is_none_when_a_codec_is_shared() -> None:
    assert no_common_codec(OFFER_AV.media[0], [PCMA], a_name="a", b_name="b") is None


def test_telephone_event_alone_is_not_a_common_codec() -> None:
    assert no_common_codec([PCMU, TEL], [PCMA, TEL], a_name="a", b_name="b", media="audio") is not None


# --- hold -------------------------------------------------------------------------------------------

def test_hold_makes_sendrecv_sendonly_and_recvonly_inactive() -> None:
    held = hold(OFFER_TWO_AUDIO.with_direction(Direction.RECVONLY, 1))
    assert [held.direction(0), held.direction(1)] == [Direction.SENDONLY, Direction.INACTIVE]


def test_hold_inactive_and_of_one_stream_only() -> None:
    held = hold(OFFER_TWO_AUDIO, 0, inactive=True)
    assert [held.direction(0), held.direction(1)] == [Direction.INACTIVE, Direction.SENDONLY]


def test_puts_on_hold_recognises_both_ways() -> None:
    assert puts_on_hold(hold(OFFER_AUDIO), 0)
    assert puts_on_hold(OFFER_AUDIO.with_connection("0.0.0.0"), 0)
    assert not puts_on_hold(OFFER_AUDIO, 0)


# --- one dialog ---------------------------------------------------------------------------------------

def test_unchanged_re_offer_keeps_version_and_changed_one_adds_one() -> None:
    state = OfferAnswerState(ALICE)
    bob_caps = caps((PCMU,))
    first = state.create_offer(OFFER_AUDIO)
    state.receive_answer(bob_answers(first, bob_caps, {"audio": 4000}))
    same = state.create_offer(OFFER_AUDIO)
    state.receive_answer(bob_answers(same, bob_caps, {"audio": 4000}))
    moved = state.create_offer(OFFER_AUDIO.with_port(0, 6000))
    assert [first.origin.sess_version, same.origin.sess_version, moved.origin.sess_version] == [
        2890844526, 2890844526, 2890844527]


def test_offer_while_one_is_outstanding_is_glare() -> None:
    state = OfferAnswerState(ALICE)
    state.create_offer(OFFER_AUDIO)
    with pytest.raises(OfferAnswerError, match="glare"):
        state.receive_offer(OFFER_AUDIO)


def test_re_offer_cannot_remove_m_lines() -> None:
    state = OfferAnswerState(ALICE)
    state.receive_answer(bob_answers(state.create_offer(OFFER_AV), caps((PCMU,), (H261,)),
                                     {"audio": 1, "video": 2}))
    with pytest.raises(OfferAnswerError, match="RFC 3264 §8"):
        state.create_offer(OFFER_AUDIO)


def test_answer_without_an_offer_is_an_error() -> None:
    with pytest.raises(OfferAnswerError, match="no offer outstanding"):
        OfferAnswerState(ALICE).receive_answer(OFFER_AUDIO)


def test_our_answer_must_match_the_offers_m_line_count() -> None:
    state = OfferAnswerState(BOB)
    state.receive_offer(OFFER_AV)
    with pytest.raises(OfferAnswerError, match="same number"):
        state.create_answer(OFFER_AUDIO)
    assert state.origin.sess_version == BOB.sess_version


def test_after_a_failed_re_offer_the_next_one_gets_a_new_version() -> None:
    state = OfferAnswerState(ALICE)
    state.receive_answer(bob_answers(state.create_offer(OFFER_AUDIO), caps((PCMU,)), {"audio": 1}))
    failed = state.create_offer(OFFER_AUDIO.with_port(0, 7000))
    state.rollback()
    retry = state.create_offer(OFFER_AUDIO.with_port(0, 7000))
    assert retry.origin.sess_version == failed.origin.sess_version + 1
