"""Stitching devices' answers into one offer to the CN and splitting it back (draft §5.2, Figs. 2-3)."""

from __future__ import annotations

import pytest

from sipmob.sdp import (
    Attribute,
    Bandwidth,
    Codec,
    Connection,
    Direction,
    DuplexSplit,
    LocalCapabilities,
    MediaCapability,
    Origin,
    SessionDescription,
    StitchError,
    answer,
    negotiate,
    parse,
    split,
    stitch,
)

MN = Origin("mn", 42, 7, "IN", "IP4", "mn.example.com")
PCMU, H263, H261 = Codec("PCMU", 8000), Codec("H263", 90000), Codec("H261", 90000)

CN = parse("""v=0
o=cn 100 100 IN IP4 cn.example.com
s=-
c=IN IP4 cn.example.com
t=0 0
m=audio 3456 RTP/AVP 0 101
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
m=video 3458 RTP/AVP 34 31
b=AS:512
""")


def device_answer(offer: SessionDescription, local: LocalCapabilities, address: str,
                  ports: dict[str, int]) -> SessionDescription:
    origin = Origin("dev", 1, 1, "IN", "IP4", address)
    return parse(answer(offer, local, origin=origin, connection_address=address, ports=ports).to_bytes())


AUDIO_CAP = MediaCapability("audio", (PCMU,))
VIDEO_CAP = MediaCapability("video", (H263,))


# --- Fig. 2: one device takes everything --------------------------------------------------------

def test_fig2_single_device_gives_a_session_level_connection() -> None:
    av = device_answer(CN, LocalCapabilities((AUDIO_CAP, VIDEO_CAP)), "av_device.example.com",
                       {"audio": 4400, "video": 5400})
    offer = stitch([(0, av, 0), (1, av, 1)], CN, MN)
    assert offer.connection == Connection("IN", "IP4", "av_device.example.com")
    assert [(m.media, m.port, m.formats, m.connection) for m in offer.media] == [
        ("audio", 4400, ("0",), None), ("video", 5400, ("34",), None)]
    assert offer.origin == MN


# --- Fig. 3: audio to one device, video to another ----------------------------------------------

def fig3_offers() -> dict[str, SessionDescription]:
    return split(CN, {0: "audio_dev", 1: "video_dev"})


def test_split_activates_only_each_devices_m_lines() -> None:
    offers = fig3_offers()
    assert [m.port for m in offers["audio_dev"].media] == [3456, 0]
    assert [m.port for m in offers["video_dev"].media] == [0, 3458]


def test_split_offers_carry_the_cns_address_and_are_valid_sdp() -> None:
    for offer in fig3_offers().values():
        reparsed = parse(offer.to_bytes())
        assert reparsed.connection == Connection("IN", "IP4", "cn.example.com")
        assert len(reparsed.media) == 2


def fig3_answers() -> tuple[SessionDescription, SessionDescription]:
    offers = fig3_offers()
    audio = device_answer(offers["audio_dev"], LocalCapabilities((AUDIO_CAP,)), "audio_dev.example.com",
                          {"audio": 4400})
    video = device_answer(offers["video_dev"], LocalCapabilities((VIDEO_CAP,)), "video_dev.example.com",
                          {"video": 5400})
    return audio, video


def test_fig3_each_m_line_gets_its_devices_address() -> None:
    audio, video = fig3_answers()
    offer = stitch([(0, audio, 0), (1, video, 1)], CN, MN)
    assert [(offer.connection_for(i), offer.media[i].port) for i in range(2)] == [
        (Connection("IN", "IP4", "audio_dev.example.com"), 4400),
        (Connection("IN", "IP4", "video_dev.example.com"), 5400)]
    assert offer.media[1].connection is not None  # media-level: devices differ


def test_fig3_cn_answer_sends_each_stream_to_its_device() -> None:
    audio, video = fig3_answers()
    offer = stitch([(0, audio, 0), (1, video, 1)], CN, MN)
    cn_caps = LocalCapabilities((MediaCapability("audio", (PCMU,)), MediaCapability("video", (H263,))))
    cn_answer = answer(offer, cn_caps, origin=CN.origin, connection_address="cn.example.com",
                       ports={"audio": 3456, "video": 3458})
    streams = negotiate(offer, cn_answer, local="answerer").streams
    assert [(s.remote_address, s.remote_port) for s in streams] == [
        ("audio_dev.example.com", 4400), ("video_dev.example.com", 5400)]


def test_stitch_follows_the_template_order_whatever_the_part_order() -> None:
    audio, video = fig3_answers()
    offer = stitch([(1, video, 1), (0, audio, 0)], CN, MN)
    assert [m.media for m in offer.media] == ["audio", "video"]
    assert offer.connection == Connection("IN", "IP4", "audio_dev.example.com")


def test_template_m_line_without_a_part_is_disabled() -> None:
    audio, _ = fig3_answers()
    offer = parse(stitch([(0, audio, 0)], CN, MN).to_bytes())
    assert (offer.media[1].media, offer.media[1].port, offer.media[1].formats) == ("video", 0, ("34", "31"))


def test_part_m_line_may_come_from_another_index() -> None:
    video_only = parse("v=0\no=tv 1 1 IN IP4 tv.local\ns=-\nc=IN IP4 tv.local\nt=0 0\n"
                       "m=video 5400 RTP/AVP 34\n")
    offer = stitch([(1, video_only, 0)], CN, MN)
    assert (offer.media[1].port, offer.connection_for(1)) == (5400, Connection("IN", "IP4", "tv.local"))


# --- what 3PCC must not break ---------------------------------------------------------------------

ODD_DEVICE = parse("""v=0
o=odd 5 5 IN IP6 2001:db8::5
s=-
c=IN IP6 2001:db8::5
t=0 0
a=x-session-thing:1
a=recvonly
m=video 5400 RTP/AVP 34
b=X-VENDOR:77
a=x-first
a=rtpmap:34 H263/90000
a=framerate:15
y=0100000001
""")


def test_unknown_attributes_bandwidth_and_lines_of_a_part_survive_verbatim() -> None:
    offer = stitch([(1, ODD_DEVICE, 0)], CN, MN)
    video = offer.media[1]
    assert video.bandwidths == (Bandwidth("X-VENDOR", 77),)
    assert video.attributes == (Attribute("x-first"), Attribute("rtpmap", "34 H263/90000"),
                                Attribute("framerate", "15"), Attribute("recvonly"))
    assert video.unknown_lines == (("y", "0100000001"),)
    assert offer.attributes == (Attribute("x-session-thing", "1"),)


def test_session_level_direction_of_a_part_moves_onto_its_m_line() -> None:
    offer = stitch([(1, ODD_DEVICE, 0)], CN, MN)
    assert offer.direction_attribute is None and offer.direction(1) is Direction.RECVONLY


def test_stitched_description_round_trips_through_the_wire() -> None:
    audio, _ = fig3_answers()
    offer = stitch([(0, audio, 0), (1, ODD_DEVICE, 0)], CN, MN)
    assert parse(offer.to_bytes()) == offer


# --- full duplex: camera and display -----------------------------------------------------------

DUPLEX = {1: DuplexSplit(output_device="display", input_device="camera")}
DISPLAY = LocalCapabilities((MediaCapability("video", (H263, H261), Direction.RECVONLY,
                                             attributes=(Attribute("framerate", "30"),)),))
CAMERA = LocalCapabilities((MediaCapability("video", (H263,), Direction.SENDONLY,
                                            attributes=(Attribute("ssrc", "1234 cname:cam"),)),))


def duplex_answers() -> tuple[SessionDescription, SessionDescription]:
    offers = split(CN, DUPLEX)
    return (device_answer(offers["display"], DISPLAY, "display.example.com", {"video": 8900}),
            device_answer(offers["camera"], CAMERA, "camera.example.com", {"video": 8800}))


def test_duplex_split_offers_sendonly_to_the_output_and_recvonly_to_the_input() -> None:
    offers = split(CN, DUPLEX)
    assert offers["display"].direction(1) is Direction.SENDONLY
    assert offers["camera"].direction(1) is Direction.RECVONLY
    assert offers["display"].media[0].port == 0


def test_duplex_answers_say_the_opposite() -> None:
    display, camera = duplex_answers()
    assert (display.direction(1), camera.direction(1)) == (Direction.RECVONLY, Direction.SENDONLY)


def test_duplex_stitch_gives_one_sendrecv_m_line_at_the_output_device() -> None:
    display, camera = duplex_answers()
    offer = stitch([(1, display, 1), (1, camera, 1)], CN, MN)
    video = offer.media[1]
    assert len(offer.media) == 2
    assert (offer.connection_for(1), video.port) == (Connection("IN", "IP4", "display.example.com"), 8900)
    assert offer.direction(1) is Direction.SENDRECV and video.direction_attribute is None


def test_duplex_stitch_keeps_only_formats_the_input_device_can_send() -> None:
    display, camera = duplex_answers()
    assert display.media[1].formats == ("34", "31")
    offer = stitch([(1, camera, 1), (1, display, 1)], CN, MN)
    assert offer.media[1].formats == ("34",)
    assert Attribute("rtpmap", "31 H261/90000") not in offer.media[1].attributes


def test_duplex_stitch_keeps_output_attributes_then_the_inputs_extra_ones() -> None:
    display, camera = duplex_answers()
    attrs = stitch([(1, display, 1), (1, camera, 1)], CN, MN).media[1].attributes
    assert attrs == (Attribute("rtpmap", "34 H263/90000"), Attribute("framerate", "30"),
                     Attribute("ssrc", "1234 cname:cam"))


def test_cn_answer_split_back_gives_each_device_its_direction_and_the_cn_address() -> None:
    display, camera = duplex_answers()
    offer = stitch([(1, display, 1), (1, camera, 1)], CN, MN)
    cn_answer = answer(offer, LocalCapabilities((MediaCapability("video", (H263,)),)), origin=CN.origin,
                       connection_address="cn2.example.com", ports={"video": 3470})
    back = split(cn_answer, DUPLEX)
    assert back["display"].direction(1) is Direction.SENDONLY
    assert back["camera"].direction(1) is Direction.RECVONLY
    assert all(sdp.connection_for(1) == Connection("IN", "IP4", "cn2.example.com") for sdp in back.values())
    assert back["camera"].media[1].port == 3470


def test_duplex_with_two_receivers_is_refused() -> None:
    display, _ = duplex_answers()
    with pytest.raises(StitchError, match="one recvonly .output. and one sendonly .input."):
        stitch([(1, display, 1), (1, display, 1)], CN, MN)


def test_duplex_without_a_common_codec_names_both_sides() -> None:
    display, camera = duplex_answers()
    vp8_camera = camera.with_media(1, camera.media[1].with_attributes(
        (Attribute("rtpmap", "34 VP8/90000"), Attribute("sendonly"))))
    with pytest.raises(StitchError, match=r"output device has H263/90000, H261/90000; the input "
                                          r"device has VP8/90000"):
        stitch([(1, display, 1), (1, vp8_camera, 1)], CN, MN)


# --- misuse -----------------------------------------------------------------------------------------

def test_media_type_mismatch_is_refused() -> None:
    audio, _ = fig3_answers()
    with pytest.raises(StitchError, match="m-line 1 is video but the part gives audio"):
        stitch([(1, audio, 0)], CN, MN)


def test_index_out_of_range_is_refused() -> None:
    audio, _ = fig3_answers()
    with pytest.raises(StitchError, match="template m-line 5 does not exist"):
        stitch([(5, audio, 0)], CN, MN)
    with pytest.raises(StitchError, match="m-line 3 does not exist"):
        split(CN, {3: "tv"})


def test_three_parts_for_one_m_line_are_refused() -> None:
    audio, _ = fig3_answers()
    with pytest.raises(StitchError, match="given by 3 parts"):
        stitch([(0, audio, 0)] * 3, CN, MN)


def test_nothing_to_stitch_is_refused() -> None:
    with pytest.raises(StitchError, match="nothing to stitch"):
        stitch([], CN, MN)
