"""Tests for sipmob.sip.message: parsing, validation, serialisation, responses and stream framing."""

from __future__ import annotations

import pathlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipmob.sip.message import (
    Headers,
    Request,
    Response,
    SIPGarbage,
    SIPParseError,
    StreamFramer,
    make_response,
    parse_message,
)
from sipmob.sip.uri import URI

TORTURE = pathlib.Path(__file__).parent / "torture"
VALID = sorted((TORTURE / "valid").glob("*.sip"))
INVALID = sorted((TORTURE / "invalid").glob("*.sip"))


def _load(group: str, name: str) -> bytes:
    return (TORTURE / group / f"{name}.sip").read_bytes()


def _values(msg: Request | Response) -> tuple[object, ...]:
    start = (msg.method, msg.uri) if isinstance(msg, Request) else (msg.status, msg.reason)
    return (*start, msg.call_id, msg.cseq, msg.vias, msg.from_, msg.to, msg.contact, msg.route,
            msg.headers.items(), msg.body)  # fmt: skip


INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@example.com>\r\n"
    b'From: "Alice A" <sip:alice@example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.10>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 5\r\n\r\nv=0\r\n"
)


# RFC 4475 --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_rfc4475_valid_message_reserialises_to_the_same_values(path: pathlib.Path) -> None:
    msg = parse_message(path.read_bytes())
    again = parse_message(msg.to_bytes())
    assert _values(again) == _values(msg)


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_rfc4475_invalid_message_is_rejected_but_not_as_garbage(path: pathlib.Path) -> None:
    with pytest.raises(SIPParseError) as info:
        parse_message(path.read_bytes())
    assert not isinstance(info.value, SIPGarbage)


def test_wsinv_folded_and_compact_headers_are_read() -> None:
    msg = parse_message(_load("valid", "wsinv"))
    assert isinstance(msg, Request)
    assert msg.cseq.seq == 9 and msg.max_forwards == 68
    assert [v.host for v in msg.vias] == ["192.0.2.2", "spindle.example.com", "192.168.255.111"]
    assert msg.from_.display_name == 'J Rosenberg \\"' and msg.from_.tag == "98asjd8"
    assert msg.to.tag == "1918181833n"
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert msg.contact[0].param("q") == "0.33" and msg.contact[0].param("secondparam") == ""
    assert msg.headers.get("Subject") == ""


def test_wsinv_unknown_headers_keep_their_order_and_value_after_reserialising() -> None:
    msg = parse_message(_load("valid", "wsinv"))
    again = parse_message(msg.to_bytes())
    names = [n for n, _ in again.headers.items()]
    assert names.index("NewFangledHeader") < names.index("UnknownHeaderWithUnusualValue")
    assert again.headers.get("unknownheaderwithunusualvalue") == ";;,,;;,;"


def test_intmeth_keeps_unusual_method_and_control_characters() -> None:
    msg = parse_message(_load("valid", "intmeth"))
    assert isinstance(msg, Request)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert msg.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_esc01_escapes_in_user_part_and_uri_params_are_decoded_once() -> None:
    msg = parse_message(_load("valid", "esc01"))
    assert msg.to.uri.user == "user"
    assert msg.contact[0].uri.params == (("lr", None), ("name", "value%41"))


def test_escnull_contacts_with_escaped_nulls_stay_distinct() -> None:
    msg = parse_message(_load("valid", "escnull"))
    assert [c.uri.user for c in msg.contact] == ["\x00", "\x00\x00"]


def test_esc02_escaped_header_name_is_not_contact() -> None:
    msg = parse_message(_load("valid", "esc02"))
    assert len(msg.contact) == 2
    assert msg.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_dblreq_octets_after_content_length_are_ignored() -> None:
    msg = parse_message(_load("valid", "dblreq"))
    assert isinstance(msg, Request) and msg.method == "REGISTER" and msg.body == b""


def test_semiuri_user_part_holds_semicolon_and_escaped_at() -> None:
    msg = parse_message(_load("valid", "semiuri"))
    assert isinstance(msg, Request) and msg.uri.user == "user;par=u@example.net"
    assert msg.headers.get_all("Accept")[-1] == "message/sipfrag"


def test_noreason_response_has_empty_reason() -> None:
    msg = parse_message(_load("valid", "noreason"))
    assert isinstance(msg, Response) and (msg.status, msg.reason) == (100, "")


def test_badvers_is_answered_with_505() -> None:
    with pytest.raises(SIPParseError) as info:
        parse_message(_load("invalid", "badvers"))
    assert info.value.status == 505


# RFC 4475 §3.2-§3.4: what we decide for messages that are syntactically valid but odd.
ACCEPTED = ["badbranch", "bcast", "bext01", "cparam01", "cparam02", "invut", "novelsc", "regaut01",
            "regescrt", "sdp01", "unkscm", "unksm2", "zeromf"]  # fmt: skip
REJECTED = {
    "insuf": "Missing To",
    "multi01": "Multiple To values",  # one value required: §20
    "mcl01": "Multiple Content-Length values",  # no way to frame it
    "inv2543": "Missing Max-Forwards",  # RFC 2543 peers are not served
}


@pytest.mark.parametrize("name", ACCEPTED)
def test_rfc4475_semantic_message_is_left_to_the_application(name: str) -> None:
    msg = parse_message(_load("semantic", name))
    assert _values(parse_message(msg.to_bytes())) == _values(msg)


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rfc4475_semantic_message_is_rejected_with_a_reason(name: str) -> None:
    with pytest.raises(SIPParseError) as info:
        parse_message(_load("semantic", name))
    assert info.value.reason == REJECTED[name]


def test_unknown_request_uri_scheme_is_kept_opaque() -> None:
    msg = parse_message(_load("semantic", "unkscm"))
    assert isinstance(msg, Request)
    assert (msg.uri.scheme, msg.uri.opaque) == ("nobodyknowsthisscheme", "totallyopaquecontent")


def test_cparam01_param_after_addr_spec_belongs_to_the_header() -> None:
    contact = parse_message(_load("semantic", "cparam01")).contact[0]
    assert contact.uri.params == () and contact.params == (("unknownparam", None),)


def test_cparam02_param_inside_brackets_belongs_to_the_uri() -> None:
    contact = parse_message(_load("semantic", "cparam02")).contact[0]
    assert contact.uri.params == (("unknownparam", None),) and contact.params == ()


def test_regescrt_embedded_route_header_is_unescaped() -> None:
    contact = parse_message(_load("semantic", "regescrt")).contact[0]
    assert contact.uri.header("route") == "<sip:sip.example.com>"


# Parsing rules -----------------------------------------------------------------------------


def test_missing_call_id_reason_names_the_header() -> None:
    with pytest.raises(SIPParseError) as info:
        parse_message(INVITE.replace(b"Call-ID: a84b4c76e66710@pc33.example.com\r\n", b""))
    assert info.value.reason == "Missing Call-ID"


def test_parse_error_carries_the_headers_needed_for_a_400() -> None:
    with pytest.raises(SIPParseError) as info:
        parse_message(INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE"))
    headers = info.value.headers
    assert isinstance(headers, Headers)
    assert [n for n, _ in headers.items()] == ["Via", "From", "To", "Call-ID", "CSeq"]
    assert info.value.request_line_ok


def test_body_shorter_than_content_length_is_rejected() -> None:
    with pytest.raises(SIPParseError):
        parse_message(INVITE[:-1])


def test_body_longer_than_content_length_is_truncated() -> None:
    assert parse_message(INVITE + b"junk").body == b"v=0\r\n"


def test_missing_content_length_takes_the_rest_of_the_datagram() -> None:
    msg = parse_message(INVITE.replace(b"Content-Length: 5\r\n", b""))
    assert msg.body == b"v=0\r\n"


def test_oversized_datagram_is_513() -> None:
    with pytest.raises(SIPParseError) as info:
        parse_message(INVITE + b"x" * 70000)
    assert info.value.status == 513


def test_not_sip_is_garbage() -> None:
    with pytest.raises(SIPGarbage):
        parse_message(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")


def test_leading_crlfs_are_ignored() -> None:
    assert isinstance(parse_message(b"\r\n\r\n" + INVITE), Request)


def test_comma_separated_vias_are_split() -> None:
    second = b";rport, SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bKx\r\n"
    msg = parse_message(INVITE.replace(b";rport\r\n", second))
    assert [v.host for v in msg.vias] == ["192.0.2.10", "2001:db8::1"]


def test_authorization_value_is_not_split_on_commas() -> None:
    value = 'Digest username="a", realm="b", nonce="c", uri="sip:x", response="d"'
    msg = parse_message(INVITE.replace(b"Max-Forwards", f"Authorization: {value}\r\nMax-Forwards".encode()))
    assert msg.headers.get_all("Authorization") == [value]


def test_structured_values_are_cached_until_headers_change() -> None:
    msg = parse_message(INVITE)
    assert msg.top_via is msg.top_via
    msg.headers.add("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp", first=True)
    assert msg.top_via.host == "proxy.example.com"


# Serialisation and responses ---------------------------------------------------------------


def test_to_bytes_sets_content_length_to_the_body() -> None:
    msg = parse_message(INVITE)
    msg.body = b"v=0\r\no=x\r\n"
    assert parse_message(msg.to_bytes()).headers.get("Content-Length") == "10"


def test_typical_invite_round_trips_byte_for_byte() -> None:
    assert parse_message(INVITE).to_bytes() == INVITE


def test_make_response_copies_dialog_headers_and_adds_to_tag() -> None:
    req = parse_message(INVITE)
    assert isinstance(req, Request)
    resp = make_response(req, 180, to_tag="a6c85cf")
    assert (resp.status, resp.reason) == (180, "Ringing")
    assert resp.to.tag == "a6c85cf" and resp.from_.tag == "1928301774"
    assert resp.call_id == req.call_id and resp.cseq == req.cseq and resp.vias == req.vias
    assert "Max-Forwards" not in resp.headers


def test_make_response_keeps_an_existing_to_tag() -> None:
    tagged = b"To: <sip:bob@example.com>;tag=old"
    req = parse_message(INVITE.replace(b"To: Bob <sip:bob@example.com>", tagged))
    assert isinstance(req, Request)
    assert make_response(req, 200, to_tag="new").to.tag == "old"


def test_make_response_output_parses() -> None:
    req = parse_message(INVITE)
    assert isinstance(req, Request)
    resp = make_response(req, 486, headers=[("Retry-After", "30")])
    again = parse_message(resp.to_bytes())
    assert isinstance(again, Response) and again.headers.get("Retry-After") == "30"


# Stream framing ----------------------------------------------------------------------------


def test_framer_cuts_messages_split_across_reads() -> None:
    framer = StreamFramer()
    stream = b"\r\n\r\n" + INVITE + INVITE
    out: list[bytes] = []
    for i in range(0, len(stream), 7):
        out += framer.feed(stream[i : i + 7])
    assert out == [INVITE, INVITE] and framer.buffered == 0


def test_framer_requires_content_length() -> None:
    with pytest.raises(SIPParseError):
        StreamFramer().feed(INVITE.replace(b"Content-Length: 5\r\n", b""))


def test_framer_limits_header_size() -> None:
    with pytest.raises(SIPParseError) as info:
        StreamFramer(max_size=1000).feed(b"INVITE sip:x SIP/2.0\r\n" + b"X: y\r\n" * 300)
    assert info.value.status == 513


# Generated messages ------------------------------------------------------------------------

_token = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~", min_size=1,
                 max_size=12)  # fmt: skip
_user = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()&=+$,;?/", min_size=1, max_size=10)
_label = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
_host = st.lists(_label, min_size=1, max_size=3).map(".".join)
_value = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(_token)
    port = draw(st.none() | st.integers(1, 65535))
    uri = URI("sip", user=draw(st.none() | _user), host=draw(_host), port=port)
    h = Headers()
    for _ in range(draw(st.integers(1, 3))):
        h.add("Via", f"SIP/2.0/UDP {draw(_host)};branch=z9hG4bK{draw(_token)}")
    h.add("Max-Forwards", str(draw(st.integers(0, 255))))
    h.add("From", f"<sip:{draw(_user)}@{draw(_host)}>;tag={draw(_token)}")
    h.add("To", f"<sip:{draw(_user)}@{draw(_host)}>")
    h.add("Call-ID", draw(_token))
    h.add("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}")
    for name in draw(st.lists(_label.map(lambda x: "X-" + x), max_size=3)):
        h.add(name, draw(_value).strip())
    return Request(method, uri, h, draw(st.binary(max_size=40)))


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_generated_request_round_trips(req: Request) -> None:
    again = parse_message(req.to_bytes())
    assert isinstance(again, Request)
    assert (again.method, again.uri, again.body) == (req.method, req.uri, req.body)
    assert again.headers.items()[:-1] == req.headers.items()  # Content-Length appended last


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_parse_errors(data: bytes) -> None:
    try:
        parse_message(data)
    except SIPParseError:
        pass


@settings(max_examples=200)
@given(st.integers(0, len(INVITE) - 1), st.binary(min_size=1, max_size=8), st.integers(0, 8))
def test_mutated_invite_only_raises_parse_errors(pos: int, insert: bytes, cut: int) -> None:
    data = INVITE[:pos] + insert + INVITE[pos + cut :]
    try:
        msg = parse_message(data)
    except SIPParseError:
        return
    parse_message(msg.to_bytes())  # whatever we accept, we can serialise and read back


# The parts of an address, each with good variants and variants that may be bad
_ADDRESS_PARTS = [
    (["", "Bob ", '"Bob A" '], ['"B\\"" ', "B<b ", '"x', "B,b ", "B;b "]),
    (["<"], ["", "<<"]),
    (["sip:", "sips:", "SIP:"], ["tel:", "http:", "sip", ""]),
    (["", "bob@", "b.o-b@"], ["b%41@", "b%4@", "a:pw@", "b;x@", "?@", "@", "b,c@", "b>@"]),
    (["a.example", "[::1]", "192.0.2.1"], ["a-", "-a", "", "a..b", "a b", "[::1", "a_b"]),
    (["", ":5060", ":65535"], [":65536", ":99999", ":", ":x", ":123456"]),
    (["", ";lr", ";transport=udp"], [";a=b=c", ";;", ";%41=1", ";x=", ";x y", ";"]),
    ([""], ["?h=1", "?", "?a"]),
    ([">"], ["", ">>"]),
    (["", ";tag=1", ';x="a b"', " ;q=0.5"], [";tag", ';x="a', ";x=", ";q=<", ";", ";x=a b", " x"]),
    (["", ", <sip:c@d>", ",sip:e@f;x=1"], [",", " x", ",*", ", ,"]),
]


@st.composite
def _addresses(draw: st.DrawFn) -> str:
    parts = [draw(st.sampled_from(good)) for good, _ in _ADDRESS_PARTS]
    if draw(st.booleans()):
        slot = draw(st.integers(0, len(_ADDRESS_PARTS) - 1))
        parts[slot] = draw(st.sampled_from(_ADDRESS_PARTS[slot][1]))
    return "".join(parts)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_addresses(), st.sampled_from(["From", "To", "Contact"]))
def test_address_headers_of_a_parsed_message_can_always_be_read(value: str, name: str) -> None:
    # From/To/Contact are checked quickly and parsed on first read: a message that parses must
    # not fail later on reading them.
    data = INVITE.replace(f"\r\n{name}: ".encode(), f"\r\nX-Old-{name}: ".encode(), 1)
    data = data.replace(b"\r\nCall-ID:", f"\r\n{name}: {value}\r\nCall-ID:".encode(), 1)
    try:
        msg = parse_message(data)
    except SIPParseError:
        return
    assert (msg.from_, msg.to, msg.contact) is not None


def test_folded_address_header_is_still_checked() -> None:
    folded = INVITE.replace(b"To: Bob <sip:bob@example.com>", b"To: Bob\r\n <sip:bob@example.com")
    with pytest.raises(SIPParseError):
        parse_message(folded)


@pytest.mark.parametrize(("to", "tag", "uri_tag"), [
    ("Bob <sip:bob@example.com;tag=u>", "new", "u"),  # a URI parameter is not the To tag
    ("sip:bob@example.com", "new", None),
    ("sip:bob@example.com;tag=old", "old", None),
    ('"Bob \\"B\\"" <sip:bob@example.com>;Tag=old', "old", None),
    ("<sip:bob@example.com>;x=\";tag=q\"", "new", None),
])  # fmt: skip
def test_make_response_adds_a_to_tag_only_when_the_to_has_none(to: str, tag: str,
                                                               uri_tag: str | None) -> None:
    req = parse_message(INVITE.replace(b"To: Bob <sip:bob@example.com>", f"To: {to}".encode()))
    assert isinstance(req, Request)
    resp = parse_message(make_response(req, 200, to_tag="new").to_bytes())
    assert resp.to.tag == tag and resp.to.uri.param("tag") == uri_tag
    assert resp.to.uri == req.to.uri and resp.to.display_name == req.to.display_name


def test_replace_top_changes_the_first_value_only_and_keeps_other_headers_readable() -> None:
    two = b"Via: SIP/2.0/UDP a.example;branch=z9hG4bK1, SIP/2.0/UDP b.example;branch=z9hG4bK2"
    one = b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport"
    req = parse_message(INVITE.replace(one, two))
    before = (req.cseq, req.call_id, req.from_, req.to)
    req.headers.replace_top("Via", "SIP/2.0/UDP a.example;branch=z9hG4bK1;received=192.0.2.9")
    assert [v.received for v in req.vias] == ["192.0.2.9", None]
    assert [v.branch for v in req.vias] == ["z9hG4bK1", "z9hG4bK2"]
    assert (req.cseq, req.call_id, req.from_, req.to) == before
    assert req.headers.items()[0][0] == "Via"
