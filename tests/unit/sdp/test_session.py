"""SDP model, parser and serialiser (RFC 8866)."""

from __future__ import annotations

import dataclasses
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipmob.sdp import (
    Attribute,
    Bandwidth,
    Connection,
    Direction,
    MediaDescription,
    Origin,
    Rtcp,
    RtpMap,
    SDPParseError,
    SessionDescription,
    Timing,
    parse,
)


def crlf(text: str) -> str:
    return "".join(line + "\r\n" for line in text.strip("\n").split("\n"))


RFC8866_EXAMPLE = crlf("""
v=0
o=jdoe 3724394400 3724394405 IN IP4 198.51.100.1
s=Call to John Smith
i=SDP Offer #1
u=http://www.jdoe.example.com/home.html
e=Jane Doe <jane@jdoe.example.com>
p=+1 617 555-6011
c=IN IP4 198.51.100.1
t=0 0
m=audio 49170 RTP/AVP 0
m=audio 49180 RTP/AVP 0
m=video 51372 RTP/AVP 99
c=IN IP6 2001:db8::2
a=rtpmap:99 h263-1998/90000
""")

RFC4566_EXAMPLE = crlf("""
v=0
o=jdoe 2890844526 2890842807 IN IP4 10.47.16.5
s=SDP Seminar
i=A Seminar on the session description protocol
u=http://www.example.com/seminars/sdp.pdf
e=j.doe@example.com (Jane Doe)
c=IN IP4 224.2.17.12/127
t=2873397496 2873404696
a=recvonly
m=audio 49170 RTP/AVP 0
m=video 51372 RTP/AVP 99
a=rtpmap:99 h263-1998/90000
""")


# --- RFC examples -----------------------------------------------------------------------------------

def test_rfc8866_example_fields() -> None:
    sdp = parse(RFC8866_EXAMPLE)
    assert sdp.origin == Origin("jdoe", 3724394400, 3724394405, "IN", "IP4", "198.51.100.1")
    assert sdp.session_name == "Call to John Smith"
    assert sdp.emails == ("Jane Doe <jane@jdoe.example.com>",)
    assert [(m.media, m.port) for m in sdp.media] == [("audio", 49170), ("audio", 49180), ("video", 51372)]


def test_rfc8866_example_media_level_ipv6_connection_overrides_session() -> None:
    sdp = parse(RFC8866_EXAMPLE)
    assert sdp.connection_for(0) == Connection("IN", "IP4", "198.51.100.1")
    assert sdp.connection_for(2) == Connection("IN", "IP6", "2001:db8::2")


def test_rfc8866_example_serialises_back_byte_for_byte() -> None:
    assert parse(RFC8866_EXAMPLE).serialise() == RFC8866_EXAMPLE


def test_rfc4566_example_multicast_ttl_and_timing() -> None:
    sdp = parse(RFC4566_EXAMPLE)
    assert sdp.connection is not None and sdp.connection.host == "224.2.17.12"
    assert sdp.timings == (Timing(2873397496, 2873404696),)


def test_session_level_direction_applies_to_media_without_one() -> None:
    sdp = parse(RFC4566_EXAMPLE)
    assert sdp.direction(0) is Direction.RECVONLY
    assert sdp.media[0].direction_attribute is None


def test_to_bytes_is_crlf_utf8() -> None:
    assert parse(RFC4566_EXAMPLE).to_bytes() == RFC4566_EXAMPLE.encode()


# --- helpers on media ---------------------------------------------------------------------------------

AV = crlf("""
v=0
o=- 1 1 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 4000 RTP/AVP 0 8 9 3 18 101
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:20
a=rtcp:4005 IN IP4 192.0.2.9
a=mid:a1
a=sendonly
m=video 5000 RTP/AVP 34 96
a=rtpmap:96 H264/90000
a=fmtp:96 profile-level-id=42e01f;packetization-mode=1
""")


@pytest.mark.parametrize(("pt", "expected"), [
    (0, RtpMap("PCMU", 8000)), (8, RtpMap("PCMA", 8000)), (9, RtpMap("G722", 8000)),
    (3, RtpMap("GSM", 8000)), (18, RtpMap("G729", 8000)), (101, RtpMap("telephone-event", 8000)),
])
def test_audio_payload_types_known_static_or_by_rtpmap(pt: int, expected: RtpMap) -> None:
    assert parse(AV).media[0].rtpmap(pt) == expected


def test_static_video_payload_type_h263() -> None:
    assert parse(AV).media[1].rtpmap(34) == RtpMap("H263", 90000)


def test_unknown_dynamic_payload_type_has_no_rtpmap() -> None:
    assert parse(AV).media[1].rtpmap(97) is None


def test_rtpmap_with_channels() -> None:
    media = dataclasses.replace(parse(AV).media[0], attributes=(Attribute("rtpmap", "111 opus/48000/2"),))
    assert media.rtpmap(111) == RtpMap("opus", 48000, 2)


def test_fmtp_by_payload_type() -> None:
    sdp = parse(AV)
    assert sdp.media[0].fmtp(101) == "0-15"
    assert sdp.media[1].fmtp(96) == "profile-level-id=42e01f;packetization-mode=1"
    assert sdp.media[0].fmtp(0) is None


def test_ptime_rtcp_mid_helpers() -> None:
    audio = parse(AV).media[0]
    assert audio.ptime == 20.0
    assert audio.rtcp == Rtcp(4005, Connection("IN", "IP4", "192.0.2.9"))
    assert audio.mid == "a1"


def test_direction_defaults_to_sendrecv() -> None:
    sdp = parse(AV)
    assert sdp.direction(0) is Direction.SENDONLY
    assert sdp.direction(1) is Direction.SENDRECV


def test_direction_reversal_and_intersection() -> None:
    assert Direction.SENDONLY.reversed() is Direction.RECVONLY
    assert Direction.INACTIVE.reversed() is Direction.INACTIVE
    assert Direction.SENDRECV.intersect(Direction.RECVONLY) is Direction.RECVONLY


def test_null_connection_is_rfc2543_hold() -> None:
    assert Connection.for_address("0.0.0.0").is_null
    assert not Connection.for_address("192.0.2.1").is_null


def test_for_address_chooses_ip6_for_colon() -> None:
    assert Connection.for_address("::1") == Connection("IN", "IP6", "::1")
    assert Connection.for_address("tv.local") == Connection("IN", "IP4", "tv.local")


# --- replace-style helpers ---------------------------------------------------------------------------

def test_with_connection_moves_every_stream_to_one_address() -> None:
    sdp = parse(RFC8866_EXAMPLE).with_connection("2001:db8::9")
    assert all(sdp.connection_for(i) == Connection("IN", "IP6", "2001:db8::9") for i in range(3))


def test_with_port_changes_one_m_line() -> None:
    sdp = parse(AV).with_port(1, 0)
    assert [m.port for m in sdp.media] == [4000, 0]


def test_with_direction_keeps_attribute_position() -> None:
    sdp = parse(AV).with_direction(Direction.INACTIVE, 0)
    names = [a.name for a in sdp.media[0].attributes]
    assert names == ["rtpmap", "fmtp", "ptime", "rtcp", "mid", "inactive"]


def test_with_direction_on_one_stream_leaves_session_direction_on_others() -> None:
    sdp = parse(RFC4566_EXAMPLE).with_direction(Direction.SENDRECV, 0)
    assert (sdp.direction(0), sdp.direction(1)) == (Direction.SENDRECV, Direction.RECVONLY)


def test_bump_version_adds_one() -> None:
    sdp = parse(AV)
    assert sdp.bump_version().origin.sess_version == sdp.origin.sess_version + 1


# --- tolerance ------------------------------------------------------------------------------------------

def test_lf_only_line_ends_accepted() -> None:
    assert parse(RFC8866_EXAMPLE.replace("\r\n", "\n")) == parse(RFC8866_EXAMPLE)


def test_trailing_white_space_and_blank_lines_ignored() -> None:
    sloppy = RFC8866_EXAMPLE.replace("\r\n", " \t\r\n") + "\r\n\r\n"
    assert parse(sloppy) == parse(RFC8866_EXAMPLE)


def test_empty_session_name_accepted_and_written_as_space() -> None:
    sdp = parse("v=0\no=- 1 1 IN IP4 h\ns=\nc=IN IP4 h\nt=0 0\n")
    assert sdp.session_name == ""
    assert "s= \r\n" in sdp.serialise()


def test_space_after_equals_in_structured_lines_accepted() -> None:
    sdp = parse("v=0\no=- 1 1 IN IP4 h\ns=-\nc= IN IP4 av_device.example.com\nt=0 0\n"
                "m=audio 4400 RTP/AVP 0\n")
    assert sdp.connection == Connection("IN", "IP4", "av_device.example.com")


def test_bytes_input() -> None:
    assert parse(RFC8866_EXAMPLE.encode()) == parse(RFC8866_EXAMPLE)


# --- what third-party call control must not lose ------------------------------------------------

UNKNOWNS = crlf("""
v=0
o=cam 7 7 IN IP4 192.0.2.7
s=Play
c=IN IP4 192.0.2.7
b=X-YZ:128
t=0 0
a=x-vendor:abc def
a=tool:cam 1.0
m=video 6000 RTP/AVP 96
b=TIAS:512000
a=rtpmap:96 PS/90000
a=x-custom
a=recvonly
a=framerate:25
y=0100000001
f=v/2/4///a///
m=text 7000 TCP/MSRP *
a=accept-types:text/plain
""")


def test_unknown_attributes_bandwidth_media_and_lines_survive_round_trip() -> None:
    assert parse(UNKNOWNS).serialise() == UNKNOWNS


def test_unknown_type_letter_lines_kept_in_their_section() -> None:
    sdp = parse(UNKNOWNS)
    assert sdp.media[0].unknown_lines == (("y", "0100000001"), ("f", "v/2/4///a///"))
    assert sdp.unknown_lines == ()


def test_attribute_order_kept() -> None:
    names = [a.name for a in parse(UNKNOWNS).media[0].attributes]
    assert names == ["rtpmap", "x-custom", "recvonly", "framerate"]


def test_unknown_bandwidth_type_kept() -> None:
    assert parse(UNKNOWNS).bandwidths == (Bandwidth("X-YZ", 128),)


def test_non_rtp_formats_are_tokens() -> None:
    assert parse(UNKNOWNS).media[1].formats == ("*",)


# --- malformed input ----------------------------------------------------------------------------------

GOOD_HEAD = "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n"


@pytest.mark.parametrize(("text", "reason"), [
    ("", "missing the required v="),
    ("o=- 1 1 IN IP4 h\nv=0\n", "first line must be v="),
    ("v=0\ns=-\nt=0 0\n", "missing the required o="),
    ("v=0\no=- 1 1 IN IP4 h\nc=IN IP4 h\nt=0 0\n", "missing the required s="),
    ("v=0\no=- 1 1 IN IP4 h\ns=-\nc=IN IP4 h\n", "missing the required t="),
    ("v=1\no=- 1 1 IN IP4 h\ns=-\nt=0 0\n", "unsupported SDP version"),
    ("v=0\no=- 1 IN IP4 h\ns=-\nt=0 0\n", "o= needs 6 fields"),
    ("v=0\no=- x 1 IN IP4 h\ns=-\nt=0 0\n", "sess-id 'x' is not a number"),
    ("v=0\no=- 1 1 IN IP4 h\ns=-\nt=0 0\nc=IN IP4 h\n", "c= is out of order"),
    ("v=0\no=- 1 1 IN IP4 h\ns=-\nc=IN IP4 h\nc=IN IP4 h\nt=0 0\n", "more than one c="),
    ("v=0\no=- 1 1 IN IP4 h\ns=-\nc=IN IP4 h\nr=7d 1h 0\nt=0 0\n", "r= without a preceding t="),
    ("v=0\no=- 1 1 IN IP4 h\ns=-\nc=IN IP4 300.1.1.1\nt=0 0\n", "not a valid IP4 address"),
    ("v=0\no=- 1 1 IN IP4 h\ns=-\nc=IN IP6 2001:db8::g\nt=0 0\n", "not a valid IP6 address"),
    ("v=0\no=- 1 1 IN IP4 h\ns=-\nm=audio 1 RTP/AVP 0\n", "m= before the required t="),
    (GOOD_HEAD + "m=audio x RTP/AVP 0\n", "port 'x' is not a number"),
    (GOOD_HEAD + "m=audio 70000 RTP/AVP 0\n", "port 70000 is out of range"),
    (GOOD_HEAD + "m=audio 4000 RTP/AVP PCMU\n", "payload type 'PCMU' is not a number"),
    (GOOD_HEAD + "m=audio 4000 RTP/AVP\n", "at least one format"),
    (GOOD_HEAD + "m=audio 4000 RTP/AVP 0\na=rtpmap:0 PCMU\n", "not <encoding>/<clock rate>"),
    (GOOD_HEAD + "m=audio 4000 RTP/AVP 0\na=rtpmap:x PCMU/8000\n", "rtpmap payload type 'x'"),
    (GOOD_HEAD + "m=audio 4000 RTP/AVP 0\na=sendonly:yes\n", "a=sendonly takes no value"),
    (GOOD_HEAD + "m=audio 4000 RTP/AVP 0\na=ptime:fast\n", "ptime 'fast'"),
    (GOOD_HEAD + "m=audio 4000 RTP/AVP 0\nb=AS\n", "not <bwtype>:<bandwidth>"),
    (GOOD_HEAD + "m=audio 4000 RTP/AVP 0\ns=again\n", "s= is not allowed in a media description"),
    (GOOD_HEAD + "hello world\n", "expected <type>=<value>"),
    (GOOD_HEAD + "a=\n", "attribute name '' is not a valid token"),
    ("v=0\no=- 1 1 IN IP4 h\ns=-\nt=0 0\nm=audio 4000 RTP/AVP 0\n", "has no c= and there is no"),
])
def test_malformed_rejected_with_reason(text: str, reason: str) -> None:
    with pytest.raises(SDPParseError, match=reason):
        parse(text)


def test_error_names_the_line() -> None:
    with pytest.raises(SDPParseError) as info:
        parse(GOOD_HEAD + "m=audio x RTP/AVP 0\n")
    assert info.value.line == 6
    assert str(info.value).startswith("line 6: ")


def test_non_utf8_rejected() -> None:
    with pytest.raises(SDPParseError, match="not UTF-8"):
        parse(GOOD_HEAD.encode() + b"i=\xff\xfe\n")


def test_nul_inside_a_line_rejected() -> None:
    with pytest.raises(SDPParseError, match="NUL"):
        parse(GOOD_HEAD + "i=a\x00b\n")


# --- properties -----------------------------------------------------------------------------------------

_INTERPRETED = {"rtpmap", "fmtp", "rtcp", "ptime", "sendrecv", "sendonly", "recvonly", "inactive"}
tokens = st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=8)
hostnames = st.builds(lambda head, tail: head + tail, st.sampled_from(string.ascii_lowercase), tokens)
free_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=12).map(
    lambda s: s.rstrip(" \t"))
addresses = st.one_of(st.ip_addresses(v=4).map(str), hostnames)
connections = st.one_of(
    st.ip_addresses(v=4).map(lambda a: Connection("IN", "IP4", str(a))),
    st.ip_addresses(v=6).map(lambda a: Connection("IN", "IP6", str(a))),
    hostnames.map(lambda h: Connection("IN", "IP4", h)))
attributes = st.one_of(
    st.builds(Attribute, tokens.filter(lambda n: n not in _INTERPRETED), st.none() | free_text),
    st.sampled_from(["sendrecv", "sendonly", "recvonly", "inactive"]).map(Attribute),
    st.builds(lambda pt, rate: Attribute("rtpmap", f"{pt} X-{pt}/{rate}"),
              st.integers(96, 127), st.integers(1, 96000)))
bandwidths = st.builds(Bandwidth, tokens, st.integers(0, 10**9))
unknown_lines = st.tuples(st.sampled_from("dfghjlnqwxy"), free_text)


@st.composite
def media_descriptions(draw: st.DrawFn, need_connection: bool) -> MediaDescription:
    proto = draw(st.sampled_from(["RTP/AVP", "RTP/SAVP", "udp", "TCP/MSRP"]))
    if "RTP/" in proto:
        formats = draw(st.lists(st.integers(0, 127).map(str), min_size=1, max_size=5))
    else:
        formats = draw(st.lists(tokens, min_size=1, max_size=3))
    return MediaDescription(
        media=draw(tokens), port=draw(st.integers(0, 65535)), proto=proto, formats=tuple(formats),
        port_count=draw(st.none() | st.integers(1, 8)),
        information=draw(st.none() | free_text),
        connection=draw(connections if need_connection else st.none() | connections),
        bandwidths=tuple(draw(st.lists(bandwidths, max_size=2))),
        key=draw(st.none() | free_text),
        attributes=tuple(draw(st.lists(attributes, max_size=5))),
        unknown_lines=tuple(draw(st.lists(unknown_lines, max_size=2))))


@st.composite
def session_descriptions(draw: st.DrawFn) -> SessionDescription:
    connection = draw(st.none() | connections)
    return SessionDescription(
        origin=Origin(draw(tokens), draw(st.integers(0, 2**63 - 1)), draw(st.integers(0, 2**63 - 1)),
                      "IN", draw(st.sampled_from(["IP4", "IP6"])), draw(addresses)),
        session_name=draw(free_text).strip(),
        information=draw(st.none() | free_text),
        uri=draw(st.none() | free_text),
        emails=tuple(draw(st.lists(free_text, max_size=2))),
        phones=tuple(draw(st.lists(free_text, max_size=2))),
        connection=connection,
        bandwidths=tuple(draw(st.lists(bandwidths, max_size=2))),
        timings=tuple(draw(st.lists(st.builds(
            Timing, st.integers(0, 2**40), st.integers(0, 2**40),
            st.lists(free_text.filter(lambda s: s.strip() != ""), max_size=2).map(tuple)),
            min_size=1, max_size=2))),
        zone_adjustments=draw(st.none() | free_text),
        key=draw(st.none() | free_text),
        attributes=tuple(draw(st.lists(attributes, max_size=4))),
        unknown_lines=tuple(draw(st.lists(unknown_lines, max_size=2))),
        media=tuple(draw(st.lists(media_descriptions(need_connection=connection is None), max_size=3))))


@settings(max_examples=40, deadline=None)
@given(session_descriptions())
def test_serialise_parse_round_trip(sdp: SessionDescription) -> None:
    text = sdp.serialise()
    parsed = parse(text)
    assert parsed == sdp
    assert parsed.serialise() == text


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(GOOD_HEAD.splitlines() + AV.splitlines() + UNKNOWNS.splitlines()
                                + ["m=audio", "a=rtpmap:", "c=IN IP4", "t=x y", "=", "\x00", "b=:"]),
                max_size=20))
def test_any_line_soup_parses_or_raises_sdp_parse_error(lines: list[str]) -> None:
    try:
        parse("\n".join(lines))
    except SDPParseError:
        pass
