"""The RFC 4117 "SDP A + SDP B" convention: what a controller's INVITE means, what we answer."""

from __future__ import annotations

import pytest

from sipmob.sdp.session import parse
from sipmob.transcoder.invocation import InvocationError, answer, parse_invocation

ALL = {"PCMU", "PCMA", "G722", "OPUS", "L16"}


def body(*sections: str, session_c: str = "") -> bytes:
    head = f"v=0\r\no=ctl 1 1 IN IP4 192.0.2.1\r\ns=-\r\n{session_c}t=0 0\r\n"
    return (head + "".join(sections)).encode()


A_OPUS = ("m=audio 4000 RTP/AVP 111 101\r\nc=IN IP4 192.0.2.10\r\na=rtpmap:111 opus/48000/2\r\n"
          "a=fmtp:111 maxplaybackrate=16000;useinbandfec=1\r\na=rtpmap:101 telephone-event/48000\r\n"
          "a=ptime:20\r\n")
B_G711 = ("m=audio 5000 RTP/AVP 0 8 100\r\nc=IN IP4 192.0.2.20\r\na=rtpmap:100 telephone-event/8000\r\n"
          "a=ptime:30\r\n")


def test_each_side_gets_its_own_first_codec_with_its_fmtp_ptime_and_events() -> None:
    plan = parse_invocation(body(A_OPUS, B_G711), ALL)
    assert plan.a.destination == ("192.0.2.10", 4000) and plan.b.destination == ("192.0.2.20", 5000)
    a, b = plan.format_a, plan.format_b
    assert (a.name, a.payload_type, a.clock_rate) == ("OPUS", 111, 48000)
    assert (a.max_playback_rate, a.fec) == (16000, True)
    assert (a.dtmf_payload_type, a.dtmf_clock_rate) == (101, 48000)
    assert (b.name, b.payload_type, b.ptime_ms) == ("PCMU", 0, 30)
    assert (b.dtmf_payload_type, b.dtmf_clock_rate) == (100, 8000)
    assert not plan.relay and plan.summary == "opus <-> PCMU"


def test_a_codec_both_sides_have_is_relayed() -> None:
    b = B_G711.replace("RTP/AVP 0 8 100", "RTP/AVP 8 100").replace("a=ptime:30", "a=ptime:20")
    a = "m=audio 4000 RTP/AVP 0 8\r\nc=IN IP4 192.0.2.10\r\n"
    plan = parse_invocation(body(a, b), ALL)
    assert plan.relay and plan.format_a.name == plan.format_b.name == "PCMA"
    assert not parse_invocation(body(a, b), ALL, relay=False).relay


def test_a_side_not_known_yet_has_no_destination() -> None:
    a = A_OPUS.replace("m=audio 4000", "m=audio 0")
    b = B_G711.replace("c=IN IP4 192.0.2.20", "c=IN IP4 0.0.0.0")
    plan = parse_invocation(body(a, b), ALL)
    assert plan.a.destination is None and plan.b.destination is None


def test_the_session_level_connection_applies_to_a_side_without_its_own() -> None:
    a = A_OPUS.replace("c=IN IP4 192.0.2.10\r\n", "")
    plan = parse_invocation(body(a, B_G711, session_c="c=IN IP4 192.0.2.99\r\n"), ALL)
    assert plan.a.destination == ("192.0.2.99", 4000)


def test_disabled_codecs_are_skipped() -> None:
    plan = parse_invocation(body(A_OPUS, B_G711), {"OPUS", "PCMA"})
    assert plan.format_b.name == "PCMA"


@pytest.mark.parametrize(("sdp", "status"), [
    (b"not sdp", 400),
    (body(A_OPUS), 488),
    (body(A_OPUS, B_G711, B_G711), 488),
    (body(A_OPUS, "m=video 5000 RTP/AVP 96\r\nc=IN IP4 192.0.2.20\r\na=rtpmap:96 H264/90000\r\n"), 488),
    (body(A_OPUS, "m=audio 5000 RTP/AVP 18\r\nc=IN IP4 192.0.2.20\r\n"), 488),
    (body(A_OPUS, B_G711.replace("c=IN IP4 192.0.2.20", "c=IN IP4 host.example")), 488),
    (body(A_OPUS.replace("a=ptime:20", "a=ptime:25"), "m=audio 5000 RTP/AVP 0\r\nc=IN IP4 192.0.2.20\r\n"),
     488),
])
def test_what_cannot_be_served_is_refused_with_a_status(sdp: bytes, status: int) -> None:
    with pytest.raises(InvocationError) as caught:
        parse_invocation(sdp, ALL)
    assert caught.value.status == status


def test_the_answer_is_two_lines_in_order_with_our_ports_and_each_sides_numbers() -> None:
    plan = parse_invocation(body(A_OPUS, B_G711), ALL)
    sdp = parse(answer(plan, "192.0.2.1", 20000, 20002, 7, 3))
    assert (sdp.origin.sess_id, sdp.origin.sess_version) == (7, 3)
    ta, tb = sdp.media
    assert (ta.port, ta.connection.host, ta.payload_types) == (20000, "192.0.2.1", (111, 101))  # type: ignore[union-attr]
    assert str(ta.rtpmap(111)) == "opus/48000/2" and str(ta.rtpmap(101)) == "telephone-event/48000"
    assert (tb.port, tb.payload_types, tb.ptime) == (20002, (0, 100), 30.0)
    assert ta.direction.value == tb.direction.value == "sendrecv"


def test_a_side_may_name_the_address_it_is_bound_to_and_the_answer_names_it() -> None:
    a = A_OPUS + "a=x-bind:198.51.100.7\r\n"
    plan = parse_invocation(body(a, B_G711), ALL)
    assert (plan.a.bind, plan.b.bind) == ("198.51.100.7", None)
    sdp = parse(answer(plan, "192.0.2.1", 20000, 20002, 7, address_a="198.51.100.7"))
    assert sdp.media[0].connection.host == "198.51.100.7"  # type: ignore[union-attr]
    assert sdp.media[1].connection.host == "192.0.2.1"  # type: ignore[union-attr]


def test_a_bind_that_is_no_ip_address_is_refused() -> None:
    with pytest.raises(InvocationError) as caught:
        parse_invocation(body(A_OPUS + "a=x-bind:wan1.example\r\n", B_G711), ALL)
    assert caught.value.status == 488 and "x-bind" in caught.value.reason
