"""The SLPv2 wire codec against the layouts of RFC 2608 §8-§10 and against malformed input."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.slp.strategies import (
    STRATEGIES,
    attr_rplys,
    messages,
    srv_rplys,
    srv_rqsts,
    srv_type_rplys,
)

from sipmob.slp.messages import (
    NO_FLAGS,
    AttrRply,
    AttrRqst,
    AuthBlock,
    DAAdvert,
    ErrorCode,
    Extension,
    Flags,
    FunctionId,
    Header,
    Message,
    SAAdvert,
    SLPParseError,
    SrvAck,
    SrvDeReg,
    SrvReg,
    SrvRply,
    SrvRqst,
    SrvTypeRply,
    SrvTypeRqst,
    UrlEntry,
)
from sipmob.slp.wire import decode, encode, encode_within, error_reply, peek_length, srv_rqst_fields

FAST = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def u24(n: int) -> bytes:
    return n.to_bytes(3, "big")


def s(text: str) -> bytes:
    raw = text.encode()
    return u16(len(raw)) + raw


def slp_header(function: int, length: int, flags: int = 0, ext: int = 0, xid: int = 0,
               lang: bytes = b"en", version: int = 2) -> bytes:
    """§8 figure, field by field."""
    return (bytes([version, function]) + u24(length) + u16(flags) + u24(ext) + u16(xid)
            + u16(len(lang)) + lang)


def with_length(data: bytes, length: int) -> bytes:
    return data[:2] + u24(length) + data[5:]


def parse_error(data: bytes) -> SLPParseError:
    with pytest.raises(SLPParseError) as info:
        decode(data)
    return info.value


def srv_rqst(xid: int = 0x1234, lang: str = "en", flags: Flags = NO_FLAGS) -> SrvRqst:
    return SrvRqst(Header(FunctionId.SrvRqst, xid, lang, flags), "", "service:printer", "DEFAULT",
                   "(x=1)", "")


# Round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(STRATEGIES), ids=lambda t: t.__name__)
def test_every_message_type_round_trips(kind: type) -> None:
    @FAST
    @given(STRATEGIES[kind])
    def check(msg: Message) -> None:
        assert decode(encode(msg)) == msg

    check()


@FAST
@given(messages())
def test_encoded_length_field_is_the_message_length(msg: Message) -> None:
    data = encode(msg)
    assert int.from_bytes(data[2:5], "big") == len(data)
    assert peek_length(data) == len(data)


# Exact bytes against the RFC figures ------------------------------------------------------------


def test_srvrqst_bytes_follow_section_8_1() -> None:
    msg = SrvRqst(Header(FunctionId.SrvRqst, 0x1234, "en", Flags.REQUEST_MCAST), "10.0.0.1",
                  "service:directory-agent", "DEFAULT", "", "")
    body = s("10.0.0.1") + s("service:directory-agent") + s("DEFAULT") + s("") + s("")
    expected = slp_header(1, 16 + len(body), flags=0x2000, xid=0x1234) + body
    assert encode(msg) == expected


def test_srvrply_bytes_follow_section_8_2_with_url_entry_and_auth_block() -> None:
    auth = AuthBlock(bsd=2, timestamp=0x01020304, spi="k1", structured_auth=b"\xaa\xbb")
    msg = SrvRply(Header(FunctionId.SrvRply, 7, "de"), ErrorCode.OK,
                  (UrlEntry("service:x://h", 300, (auth,)),))
    auth_bytes = u16(2) + u16(10 + 2 + 2) + bytes([1, 2, 3, 4]) + s("k1") + b"\xaa\xbb"
    entry = b"\x00" + u16(300) + s("service:x://h") + b"\x01" + auth_bytes
    body = u16(0) + u16(1) + entry
    assert encode(msg) == slp_header(2, 16 + len(body), xid=7, lang=b"de") + body


def test_srvreg_bytes_follow_section_8_3_with_fresh_flag() -> None:
    msg = SrvReg(Header(FunctionId.SrvReg, 9, "en", Flags.FRESH),
                 UrlEntry("service:tv://10.0.0.5", 3600), "service:tv", "DEFAULT", "(room=living)")
    body = (b"\x00" + u16(3600) + s("service:tv://10.0.0.5") + b"\x00" + s("service:tv")
            + s("DEFAULT") + s("(room=living)") + b"\x00")
    assert encode(msg) == slp_header(3, 16 + len(body), flags=0x4000, xid=9) + body


def test_daadvert_bytes_follow_section_8_5() -> None:
    msg = DAAdvert(Header(FunctionId.DAAdvert), ErrorCode.OK, 0x5F000000,
                   "service:directory-agent://10.0.0.1", "DEFAULT", "", "")
    body = (u16(0) + bytes([0x5F, 0, 0, 0]) + s("service:directory-agent://10.0.0.1")
            + s("DEFAULT") + s("") + s("") + b"\x00")
    assert encode(msg) == slp_header(8, 16 + len(body)) + body


def test_srvtyperqst_for_all_naming_authorities_sends_0xffff_and_no_string() -> None:
    msg = SrvTypeRqst(Header(FunctionId.SrvTypeRqst, 1), "", None, "DEFAULT")
    body = s("") + b"\xff\xff" + s("DEFAULT")
    data = encode(msg)
    assert data == slp_header(9, 16 + len(body), xid=1) + body
    assert decode(data).naming_authority is None  # type: ignore[union-attr]


def test_srvtyperqst_for_iana_sends_an_empty_naming_authority() -> None:
    msg = SrvTypeRqst(Header(FunctionId.SrvTypeRqst, 1), "", "", "DEFAULT")
    assert encode(msg).endswith(s("") + s("") + s("DEFAULT"))
    assert decode(encode(msg)).naming_authority == ""  # type: ignore[union-attr]


def test_extension_chain_offsets_on_encode_follow_section_9_1() -> None:
    exts = (Extension(0x0002, b"abc"), Extension(0x8001, b""), Extension(0x0003, b"z"))
    msg = SrvAck(Header(FunctionId.SrvAck, 5, "en", extensions=exts), ErrorCode.OK)
    data = encode(msg)
    body_end = 16 + 2
    first, second, third = body_end, body_end + 5 + 3, body_end + 5 + 3 + 5
    assert data[7:10] == u24(first)
    assert data[first:first + 5] == u16(0x0002) + u24(second)
    assert data[second:second + 5] == u16(0x8001) + u24(third)
    assert data[third:third + 5] == u16(0x0003) + u24(0)
    assert len(data) == third + 5 + 1
    assert decode(data) == msg


def test_url_entry_reserved_byte_is_sent_as_zero() -> None:
    msg = SrvDeReg(Header(FunctionId.SrvDeReg), "DEFAULT", UrlEntry("service:x://h", 0, (), 0x55),
                   "")
    data = encode(msg)
    assert data[16 + len(s("DEFAULT"))] == 0


# Malformed headers ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 1, 3, 255])
def test_wrong_version_is_ver_not_supported(version: int) -> None:
    data = bytearray(encode(srv_rqst()))
    data[0] = version
    err = parse_error(bytes(data))
    assert err.error == ErrorCode.VER_NOT_SUPPORTED
    assert err.header is None


@pytest.mark.parametrize("function", [0, 12, 255])
def test_unknown_function_id_is_msg_not_supported(function: int) -> None:
    data = bytearray(encode(srv_rqst()))
    data[1] = function
    assert parse_error(bytes(data)).error == ErrorCode.MSG_NOT_SUPPORTED


def test_message_shorter_than_the_fixed_header_is_a_parse_error_without_header() -> None:
    err = parse_error(encode(srv_rqst())[:13])
    assert (err.error, err.header) == (ErrorCode.PARSE_ERROR, None)


def test_language_tag_overrunning_the_datagram_leaves_no_header() -> None:
    data = slp_header(1, 16, lang=b"en")[:15]
    err = parse_error(with_length(data, len(data)))
    assert (err.error, err.header) == (ErrorCode.PARSE_ERROR, None)


def test_language_tag_that_is_not_utf8_leaves_no_header() -> None:
    data = encode(srv_rqst(lang="en"))
    err = parse_error(data[:14] + b"\xff" + data[15:])
    assert (err.error, err.header) == (ErrorCode.PARSE_ERROR, None)


@pytest.mark.parametrize("delta", [-1, 1, 1000])
def test_length_field_not_matching_the_datagram_is_a_parse_error_with_header(delta: int) -> None:
    data = encode(srv_rqst(xid=0xBEEF, lang="fr"))
    err = parse_error(with_length(data, len(data) + delta))
    assert err.error == ErrorCode.PARSE_ERROR
    assert err.header == Header(FunctionId.SrvRqst, 0xBEEF, "fr")


def test_datagram_longer_than_its_length_field_is_a_parse_error() -> None:
    data = encode(srv_rqst())
    assert parse_error(data + b"\x00").error == ErrorCode.PARSE_ERROR


@pytest.mark.parametrize("bit", [0x0001, 0x0100, 0x1000])
def test_reserved_flag_bits_are_a_parse_error_answered_without_them(bit: int) -> None:
    data = encode(srv_rqst(flags=Flags.FRESH))
    flags = int.from_bytes(data[5:7], "big") | bit
    err = parse_error(data[:5] + u16(flags) + data[7:])
    assert err.error == ErrorCode.PARSE_ERROR
    assert err.header is not None and err.header.flags == Flags.FRESH


# Malformed bodies -------------------------------------------------------------------------------


def test_string_length_overrunning_the_message_is_a_parse_error_with_header() -> None:
    data = bytearray(encode(srv_rqst(xid=42)))
    data[16:18] = u16(500)  # the <PRList> length
    err = parse_error(bytes(data))
    assert err.error == ErrorCode.PARSE_ERROR
    assert err.header is not None and err.header.xid == 42


def test_truncated_body_with_patched_length_is_a_parse_error_at_every_cut() -> None:
    data = encode(SrvReg(Header(FunctionId.SrvReg, 3), UrlEntry("service:x://h", 60,
                                                                 (AuthBlock(2, 1, "k", b"sig"),)),
                         "service:x", "DEFAULT", "(a=1)", (AuthBlock(2, 1, "k", b"sig"),)))
    for cut in range(16, len(data)):
        err = parse_error(with_length(data[:cut], cut))
        assert err.error == ErrorCode.PARSE_ERROR and err.header is not None


def test_invalid_utf8_in_a_body_string_is_a_parse_error_with_header() -> None:
    msg = SrvRqst(Header(FunctionId.SrvRqst, 77), "", "service:ab", "DEFAULT", "", "")
    data = encode(msg).replace(b"service:ab", b"service:\xc3\x28")
    err = parse_error(data)
    assert err.error == ErrorCode.PARSE_ERROR
    assert err.header is not None and err.header.xid == 77


def test_bytes_left_after_the_body_inside_the_length_are_a_parse_error() -> None:
    data = encode(srv_rqst()) + b"junk"
    assert parse_error(with_length(data, len(data))).error == ErrorCode.PARSE_ERROR


def test_auth_block_length_shorter_than_its_own_fields_is_a_parse_error() -> None:
    msg = SAAdvert(Header(FunctionId.SAAdvert), "service:service-agent://10.0.0.2", "DEFAULT", "",
                   (AuthBlock(2, 1, "key", b"sig"),))
    data = bytearray(encode(msg))
    at = data.index(b"key") - 8  # the block length field
    data[at:at + 2] = u16(9)
    assert parse_error(bytes(data)).error == ErrorCode.PARSE_ERROR


def test_unknown_error_code_in_a_reply_is_a_parse_error() -> None:
    data = bytearray(encode(SrvAck(Header(FunctionId.SrvAck), ErrorCode.OK)))
    data[16:18] = u16(8)  # unassigned (IANA registry)
    assert parse_error(bytes(data)).error == ErrorCode.PARSE_ERROR


def test_error_reply_truncated_after_the_error_code_is_accepted() -> None:
    # §7: with a non-zero error code the rest of a reply MAY be truncated.
    for function in (2, 7, 8, 10):
        body = u16(ErrorCode.SCOPE_NOT_SUPPORTED)
        msg = decode(slp_header(function, 16 + len(body), xid=4) + body)
        assert msg.error == ErrorCode.SCOPE_NOT_SUPPORTED  # type: ignore[union-attr]
        assert msg.header.xid == 4


def test_successful_reply_truncated_after_the_error_code_is_a_parse_error() -> None:
    body = u16(ErrorCode.OK)
    assert parse_error(slp_header(2, 16 + len(body)) + body).error == ErrorCode.PARSE_ERROR


def test_non_zero_url_entry_reserved_byte_is_accepted_and_reported() -> None:
    msg = SrvRply(Header(FunctionId.SrvRply), ErrorCode.OK, (UrlEntry("service:x://h", 10),))
    data = bytearray(encode(msg))
    data[20] = 0x80  # reserved byte of the first URL entry
    decoded = decode(bytes(data))
    assert decoded.urls[0].reserved == 0x80  # type: ignore[union-attr]


# Extensions -------------------------------------------------------------------------------------


def _with_chain(msg: Message, chain: bytes, first: int | None = None) -> bytes:
    """The message with raw extension bytes appended and the header offset pointing at them."""
    data = encode(msg)
    offset = len(data) if first is None else first
    data = data + chain
    return data[:2] + u24(len(data)) + data[5:7] + u24(offset) + data[10:]


def test_unknown_optional_extensions_are_kept() -> None:
    chain = u16(0x0123) + u24(0) + b"data"
    msg = decode(_with_chain(srv_rqst(), chain))
    assert msg.header.extensions == (Extension(0x0123, b"data"),)


def test_unknown_mandatory_extension_is_option_not_understood_with_header() -> None:
    start = len(encode(srv_rqst(xid=99)))
    chain = u16(0x0002) + u24(start + 6) + b"x" + u16(0x4001) + u24(0)
    data = _with_chain(srv_rqst(xid=99), chain)
    err = parse_error(data)
    assert err.error == ErrorCode.OPTION_NOT_UNDERSTOOD
    assert err.header is not None and err.header.xid == 99


def test_understood_mandatory_extension_is_decoded() -> None:
    data = _with_chain(srv_rqst(), u16(0x4001) + u24(0) + b"pid")
    msg = decode(data, understood_extensions={0x4001})
    assert msg.header.extensions == (Extension(0x4001, b"pid"),)


def test_extension_offset_into_the_header_is_a_parse_error() -> None:
    data = _with_chain(srv_rqst(), u16(1) + u24(0), first=10)
    assert parse_error(data).error == ErrorCode.PARSE_ERROR


def test_extension_offset_into_the_body_is_a_parse_error() -> None:
    data = encode(srv_rqst())
    assert parse_error(_with_chain(srv_rqst(), u16(1) + u24(0), first=len(data) - 3)).error \
        == ErrorCode.PARSE_ERROR


def test_extension_offset_outside_the_message_is_a_parse_error() -> None:
    data = _with_chain(srv_rqst(), u16(1) + u24(0), first=10_000)
    assert parse_error(data).error == ErrorCode.PARSE_ERROR


def test_extension_pointing_back_at_itself_is_a_parse_error() -> None:
    start = len(encode(srv_rqst()))
    data = _with_chain(srv_rqst(), u16(1) + u24(start))
    assert parse_error(data).error == ErrorCode.PARSE_ERROR


def test_extension_loop_between_two_extensions_is_a_parse_error() -> None:
    start = len(encode(srv_rqst()))
    data = _with_chain(srv_rqst(), u16(1) + u24(start + 5) + u16(2) + u24(start))
    assert parse_error(data).error == ErrorCode.PARSE_ERROR


def test_extension_header_cut_short_is_a_parse_error() -> None:
    data = _with_chain(srv_rqst(), u16(1) + b"\x00")
    assert parse_error(data).error == ErrorCode.PARSE_ERROR


# Anything at all --------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_only_ever_raise_slp_parse_error(data: bytes) -> None:
    try:
        decode(data)
    except SLPParseError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_random_bodies_behind_a_valid_header_only_ever_raise_slp_parse_error(body: bytes) -> None:
    for function in range(1, 12):
        try:
            decode(slp_header(function, 16 + len(body)) + body)
        except SLPParseError as err:
            assert err.header is not None or err.error != ErrorCode.PARSE_ERROR


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(messages(), st.data())
def test_mutated_messages_only_ever_raise_slp_parse_error(msg: Message, data: st.DataObject) -> None:
    raw = bytearray(encode(msg))
    how = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if how == "flip":
        for at in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4)):
            raw[at] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        del raw[data.draw(st.integers(0, len(raw) - 1)):]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=8))
    if data.draw(st.booleans()) and len(raw) >= 5:
        raw[2:5] = u24(len(raw))  # keep the length right, so the body parser is exercised
    try:
        decode(bytes(raw))
    except SLPParseError:
        pass


# peek_length ------------------------------------------------------------------------------------


def test_peek_length_needs_the_first_five_bytes() -> None:
    data = encode(srv_rqst())
    assert [peek_length(data[:n]) for n in range(5)] == [None] * 5
    assert peek_length(data[:5]) == len(data)


def test_peek_length_reads_the_first_of_several_messages_in_a_stream() -> None:
    first, second = encode(srv_rqst(xid=1)), encode(SrvAck(Header(FunctionId.SrvAck), ErrorCode.OK))
    assert peek_length(first + second) == len(first)


def test_peek_length_rejects_a_wrong_version_at_once() -> None:
    with pytest.raises(SLPParseError) as info:
        peek_length(b"\x01")
    assert info.value.error == ErrorCode.VER_NOT_SUPPORTED


def test_peek_length_rejects_a_length_shorter_than_a_header() -> None:
    with pytest.raises(SLPParseError) as info:
        peek_length(b"\x02\x01\x00\x00\x0d")
    assert info.value.error == ErrorCode.PARSE_ERROR


# error_reply ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("request_id", "reply_type"), [
    (FunctionId.SrvRqst, SrvRply),
    (FunctionId.SrvReg, SrvAck),
    (FunctionId.SrvDeReg, SrvAck),
    (FunctionId.AttrRqst, AttrRply),
    (FunctionId.SrvTypeRqst, SrvTypeRply),
])
def test_error_reply_answers_each_request_with_its_reply_type(request_id: FunctionId,
                                                              reply_type: type) -> None:
    data = error_reply(Header(request_id, 0xABCD, "de", Flags.FRESH), ErrorCode.PARSE_ERROR)
    assert data is not None
    reply = decode(data)
    assert type(reply) is reply_type
    assert reply.error == ErrorCode.PARSE_ERROR  # type: ignore[union-attr]
    assert reply.header == Header(reply.header.function_id, 0xABCD, "de")


@pytest.mark.parametrize("function", [FunctionId.SrvRply, FunctionId.SrvAck, FunctionId.AttrRply,
                                      FunctionId.DAAdvert, FunctionId.SrvTypeRply,
                                      FunctionId.SAAdvert])
def test_error_reply_is_none_for_messages_that_get_no_reply(function: FunctionId) -> None:
    assert error_reply(Header(function, 1), ErrorCode.PARSE_ERROR) is None


def test_error_reply_is_none_for_a_multicast_request() -> None:
    header = Header(FunctionId.SrvRqst, 1, flags=Flags.REQUEST_MCAST)
    assert error_reply(header, ErrorCode.PARSE_ERROR) is None


def test_error_reply_to_a_malformed_request_carries_its_xid() -> None:
    data = bytearray(encode(srv_rqst(xid=0x4242, lang="it")))
    data[16:18] = u16(999)
    err = parse_error(bytes(data))
    assert err.header is not None
    reply = error_reply(err.header, err.error)
    assert reply is not None
    assert decode(reply) == SrvRply(Header(FunctionId.SrvRply, 0x4242, "it"), ErrorCode.PARSE_ERROR)


# encode_within ----------------------------------------------------------------------------------


def _urls(n: int) -> tuple[UrlEntry, ...]:
    return tuple(UrlEntry(f"service:tv://10.0.0.{i}:5060", 600) for i in range(n))


def test_reply_that_fits_is_encoded_unchanged() -> None:
    msg = SrvRply(Header(FunctionId.SrvRply, 1), ErrorCode.OK, _urls(3))
    assert encode_within(msg, 1400) == encode(msg)


def test_srvrply_too_big_keeps_whole_url_entries_and_sets_overflow() -> None:
    msg = SrvRply(Header(FunctionId.SrvRply, 1), ErrorCode.OK, _urls(100))
    data = encode_within(msg, 1400)
    reply = decode(data)
    assert isinstance(reply, SrvRply) and reply.header.overflow
    assert len(data) <= 1400
    assert reply.urls == msg.urls[:len(reply.urls)]
    one_more = SrvRply(msg.header, ErrorCode.OK, msg.urls[:len(reply.urls) + 1])
    assert len(encode(one_more)) > 1400


def test_attrrply_too_big_keeps_whole_attributes_drops_signatures_and_sets_overflow() -> None:
    attrs = ",".join(f"(name{i}=a,b,c)" for i in range(200)) + ",keyword"
    msg = AttrRply(Header(FunctionId.AttrRply, 1), ErrorCode.OK, attrs, (AuthBlock(2, 1, "k", b"s"),))
    reply = decode(encode_within(msg, 500))
    assert isinstance(reply, AttrRply) and reply.header.overflow
    assert reply.attr_auths == ()
    assert attrs.startswith(reply.attr_list + ",")
    assert reply.attr_list.endswith("=a,b,c)")


def test_srvtyperply_too_big_keeps_whole_service_types_and_sets_overflow() -> None:
    types = ",".join(f"service:type{i}" for i in range(200))
    msg = SrvTypeRply(Header(FunctionId.SrvTypeRply, 1), ErrorCode.OK, types)
    reply = decode(encode_within(msg, 300))
    assert isinstance(reply, SrvTypeRply) and reply.header.overflow
    assert reply.srvtype_list and types.startswith(reply.srvtype_list + ",")


def test_extensions_that_leave_no_room_are_dropped_on_overflow() -> None:
    header = Header(FunctionId.SrvRply, 1, extensions=(Extension(0x0002, b"x" * 500),))
    reply = decode(encode_within(SrvRply(header, ErrorCode.OK, _urls(5)), 200))
    assert reply.header.overflow and reply.header.extensions == ()


@FAST
@given(st.one_of(srv_rplys(), attr_rplys(), srv_type_rplys()), st.integers(40, 400))
def test_truncated_replies_fit_and_decode(msg: SrvRply | AttrRply | SrvTypeRply,
                                          limit: int) -> None:
    data = encode_within(msg, limit)
    reply = decode(data)
    if data == encode(msg):
        return
    # Nothing is smaller than the reply with an empty list and no extensions.
    h = msg.header
    smallest = len(encode(type(msg)(Header(h.function_id, h.xid, h.lang), msg.error)))
    assert len(data) <= max(limit, smallest)
    assert reply.header.overflow


# encode refuses what the wire cannot carry -------------------------------------------------------


def test_encode_refuses_a_header_of_another_message_type() -> None:
    with pytest.raises(ValueError):
        encode(SrvAck(Header(FunctionId.SrvRqst), ErrorCode.OK))


def test_encode_never_sends_reserved_flag_bits() -> None:
    with pytest.raises(ValueError):
        encode(SrvAck(Header(FunctionId.SrvAck, flags=Flags(0x0004)), ErrorCode.OK))


def test_encode_refuses_a_string_longer_than_its_length_field() -> None:
    with pytest.raises(ValueError):
        encode(AttrRqst(Header(FunctionId.AttrRqst), "", "x" * 70000, "DEFAULT"))


def test_encode_refuses_a_lifetime_beyond_16_bits() -> None:
    with pytest.raises(ValueError):
        encode(SrvReg(Header(FunctionId.SrvReg), UrlEntry("service:x://h", 70000), "service:x",
                      "DEFAULT", ""))



@given(st.one_of(srv_rqsts(), messages()), st.data())
@settings(max_examples=1000)
def test_srv_rqst_fields_read_what_decode_reads_or_decline(msg: Message, data: st.DataObject) -> None:
    raw = bytearray(encode(msg))
    if data.draw(st.booleans()):  # mutated, as in the test above
        for at in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=3)):
            raw[at] ^= data.draw(st.integers(1, 255))
        if data.draw(st.booleans()) and len(raw) >= 5:
            raw[2:5] = u24(len(raw))
    fields = srv_rqst_fields(bytes(raw))
    try:
        decoded = decode(bytes(raw))
    except SLPParseError:
        assert fields is None  # whatever `decode` objects to is declined
        return
    if fields is None:
        # Declined only what is not a plain SrvRqst: another message, extensions, an SPI.
        assert not isinstance(decoded, SrvRqst) or decoded.spi or decoded.header.extensions
        return
    assert isinstance(decoded, SrvRqst)
    assert fields == (decoded.header.xid, decoded.header.lang, decoded.prlist, decoded.service_type,
                      decoded.scope_list, decoded.predicate)
