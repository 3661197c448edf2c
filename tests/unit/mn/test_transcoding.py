"""The phone's side of the transcoder (sans-I/O parts): the DA filter, the choice among
transcoders, "SDP A + SDP B" as `sipmob.transcoder.invocation` reads it, each side as an offer, the
CN's description widened for a later move, the leg's record, and the planner's `NoCommonCodec`."""

from __future__ import annotations

import pytest

from sipmob.mn.mobility import CallState, Device, NoCommonCodec, initial_layout, plan_transfer
from sipmob.mn.transcoding import (
    TranscoderLeg,
    TranscodingFailed,
    choose,
    cn_names,
    codec_of,
    device_section,
    display,
    invocation,
    party,
    predicate,
    section,
    widen,
)
from sipmob.sdp import parse
from sipmob.transcoder.invocation import answer, parse_invocation

CN = parse("v=0\r\no=cn 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
           "m=audio 4000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
           "a=sendrecv\r\n")
CAPS = parse("v=0\r\no=cn 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
             "m=audio 9 RTP/AVP 96 8 101\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:8 PCMA/8000\r\n"
             "a=rtpmap:101 telephone-event/8000\r\n")
MN = parse("v=0\r\no=mn 7 7 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n"
           "m=audio 5000 RTP/AVP 0 8\r\n")
DESK = Device("sip:desk@192.0.2.20", "Desk phone", frozenset({"audio-sendrecv"}), ("PCMU",))
ENABLED = {"PCMU", "PCMA", "G722", "OPUS", "L16"}


def test_the_da_filter_asks_for_one_codec_of_each_side() -> None:
    assert predicate(["PCMA"], ["PCMU"]) == "(&(audio-codecs=PCMA)(audio-codecs=PCMU))"
    assert predicate(["opus", "PCMA", "opus"], ["G722"]) == \
        "(&(|(audio-codecs=opus)(audio-codecs=PCMA))(audio-codecs=G722))"
    assert predicate(["a(b"], ["PCMU"]).startswith("(&(audio-codecs=a\\28b)")  # escaped, not a filter


def test_the_trusted_transcoder_with_most_free_channels_is_chosen_and_a_full_one_never() -> None:
    t: tuple[()] = ()
    assert choose([("sip:a", {"free-channels": (2,), "trusted": t}),
                   ("sip:b", {"free-channels": (10,), "trusted": t})]) == "sip:b"
    assert choose([("sip:a", {"free-channels": (0,), "trusted": t}), ("sip:b", {"trusted": t})]) is None
    assert choose([("sip:a", {"free-channels": ("many",), "trusted": t})]) is None
    assert choose([]) is None


def test_a_transcoder_the_da_does_not_trust_is_never_chosen() -> None:
    assert choose([("sip:stranger", {"free-channels": (100,)})]) is None
    assert choose([("sip:stranger", {"free-channels": (100,)}),
                   ("sip:ours", {"free-channels": (1,), "trusted": ()})]) == "sip:ours"


def test_the_invocation_is_what_the_transcoder_reads_and_its_answer_gives_each_party_an_offer() -> None:
    body = invocation(list(CN.media[0].with_port(0).with_connection("0.0.0.0").lines()),
                      device_section(DESK.audio_codecs), "192.0.2.9")
    plan = parse_invocation(body.to_bytes(), ENABLED)
    assert plan.summary == "PCMA <-> PCMU" and plan.a.destination is None and plan.b.destination is None
    tx = parse(answer(plan, "192.0.2.50", 30000, 30002, 1))
    ta, tb = party(tx, 0), party(tx, 1)
    assert (ta.media[0].port, str(ta.connection_for(0).host)) == (30000, "192.0.2.50")  # type: ignore[union-attr]
    assert (tb.media[0].port, codec_of(tb, 0)) == (30002, "PCMU")
    assert (codec_of(tx, 0), codec_of(tx, 1)) == ("PCMA", "PCMU")
    # The update with both parties' answers: their addresses now.
    desk_answer = parse("v=0\r\no=d 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n"
                        "m=audio 7000 RTP/AVP 0\r\n")
    update = parse_invocation(invocation(section(CN, 0), section(desk_answer, 0), "192.0.2.9").to_bytes(),
                              ENABLED)
    assert update.a.destination == ("192.0.2.1", 4000) and update.b.destination == ("192.0.2.20", 7000)


def test_a_device_with_no_codec_sdp_can_name_is_refused() -> None:
    with pytest.raises(TranscodingFailed, match="AMR-WB"):
        device_section(["AMR-WB"])
    assert device_section(["G722", "opus"])[0] == "m=audio 0 RTP/AVP 9 111 101"


def test_widen_gives_a_later_device_every_codec_the_cn_takes_at_its_address() -> None:
    only_pcma = CN
    wide = widen(only_pcma, 0, CAPS)
    assert cn_names(wide.media[0]) == ["opus", "PCMA"]
    assert (wide.media[0].port, wide.connection_for(0).host) == (4000, "192.0.2.1")  # type: ignore[union-attr]
    assert widen(only_pcma, 0, None) is only_pcma


def test_the_leg_round_trips_through_its_record_and_names_codecs_for_people() -> None:
    leg = TranscoderLeg("sip:transcoder@192.0.2.50:5070", DESK.uri, 0, "opus", "PCMU")
    assert TranscoderLeg.from_record(leg.to_record()) == leg
    assert leg.summary == "Opus <-> PCMU" and display("g722") == "G722"


def test_the_planner_says_which_stream_and_device_share_no_codec() -> None:
    call = CallState("1", "sip:cn@192.0.2.1", CN, MN, initial_layout(CN))
    with pytest.raises(NoCommonCodec) as caught:
        plan_transfer(call, [DESK])
    assert (caught.value.index, caught.value.device, caught.value.media) == (0, DESK, "audio")
    assert str(caught.value).startswith("no common audio codec: sip:cn@192.0.2.1 has PCMA/8000")
