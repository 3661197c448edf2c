"""Tests for sipmob.sip.uri: URI parsing, serialisation, §19.1.4 comparison and name-addr values."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipmob.sip.uri import URI, NameAddr, SIPParseError


def test_sip_uri_components_are_parsed() -> None:
    uri = URI.parse("sip:alice:secret@Atlanta.example.com:5061;transport=tcp;lr?Subject=hi%20there")
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sip", "alice", "secret", "atlanta.example.com", 5061)  # fmt: skip
    assert uri.params == (("transport", "tcp"), ("lr", None))
    assert uri.headers == (("Subject", "hi there"),)


def test_ipv6_host_is_kept_without_brackets_and_written_with_them() -> None:
    uri = URI.parse("sips:bob@[2001:db8::10]:5061")
    assert uri.host_port == ("2001:db8::10", 5061)
    assert str(uri) == "sips:bob@[2001:db8::10]:5061"


def test_tel_uri_keeps_subscriber_in_user() -> None:
    uri = URI.parse("tel:+1-201-555-0123;phone-context=example.com")
    assert (uri.user, uri.host, uri.param("phone-context")) == ("+1-201-555-0123", "", "example.com")
    assert str(uri) == "tel:+1-201-555-0123;phone-context=example.com"


def test_escaped_user_is_decoded_and_escaped_again() -> None:
    uri = URI.parse("sip:I%20have%20spaces@example.net")
    assert uri.user == "I have spaces"
    assert str(uri) == "sip:I%20have%20spaces@example.net"


def test_replaces_header_in_refer_to_uri_is_unescaped() -> None:
    uri = URI.parse("sip:bob@example.com?Replaces=abc%40host%3Bto-tag%3D1%3Bfrom-tag%3D2")
    assert uri.header("replaces") == "abc@host;to-tag=1;from-tag=2"
    assert URI.parse(str(uri)) == uri


@pytest.mark.parametrize("bad", ["sip:", "<sip:a@b>", "sip:a@b c", "sip:a@b:99999", "sip:a%zz@b", "nocolon"])
def test_malformed_uri_is_rejected(bad: str) -> None:
    with pytest.raises(SIPParseError):
        URI.parse(bad)


def test_param_lookup_is_case_insensitive() -> None:
    assert URI.parse("sip:a@b;Transport=TCP").transport == "tcp"


def test_with_params_replaces_in_place_and_appends() -> None:
    uri = URI.parse("sip:a@b;transport=udp").with_params(transport="tcp", lr=None)
    assert str(uri) == "sip:a@b;transport=tcp;lr"


# §19.1.4 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
        ("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
         "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"),
        ("sip:alice@atlanta.com?subject=project%20x&priority=urgent",
         "sip:alice@atlanta.com?priority=urgent&subject=project%20x"),
    ],
)  # fmt: skip
def test_rfc3261_equivalent_uris(a: str, b: str) -> None:
    assert URI.parse(a).equivalent(URI.parse(b))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
        ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ],
)
def test_rfc3261_different_uris(a: str, b: str) -> None:
    assert not URI.parse(a).equivalent(URI.parse(b))


# NameAddr ----------------------------------------------------------------------------------


def test_addr_spec_params_belong_to_the_header() -> None:
    addr = NameAddr.parse("sip:bob@example.com;tag=abc")
    assert addr.uri.params == () and addr.tag == "abc"


def test_name_addr_params_inside_brackets_belong_to_the_uri() -> None:
    addr = NameAddr.parse('"Bob B" <sip:bob@example.com;transport=tcp>;tag=abc')
    assert (addr.display_name, addr.uri.transport, addr.tag) == ("Bob B", "tcp", "abc")


def test_name_addr_serialises_with_brackets_when_uri_has_params() -> None:
    addr = NameAddr(None, URI.parse("sip:bob@example.com;lr"), (("tag", "x"),))
    assert str(addr) == "<sip:bob@example.com;lr>;tag=x"


def test_display_name_with_quotes_is_escaped() -> None:
    addr = NameAddr('say "hi" \\', URI.parse("sip:a@b"))
    assert NameAddr.parse(str(addr)) == addr


def test_with_tag_adds_tag() -> None:
    assert NameAddr.parse("<sip:a@b>").with_tag("t1").tag == "t1"


_user = st.text("abcdefghijklmnopqrstuvwxyz0123456789 @:%<>\"-_.!~*'()&=+$,;?/é", min_size=1, max_size=12)
_label = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
_word = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)
_pvalue = st.none() | st.text("abcdefghijklmnopqrstuvwxyz0123456789 ;=@", min_size=1, max_size=8)


@settings(max_examples=150)
@given(
    st.sampled_from(["sip", "sips"]),
    st.none() | _user,
    st.none() | _user,
    st.lists(_label, min_size=1, max_size=3).map(".".join),
    st.none() | st.integers(0, 65535),
    st.lists(st.tuples(_word, _pvalue), max_size=3),
    st.lists(st.tuples(_word, st.text("abc =&?@<>%", max_size=6)), max_size=2),
)
def test_uri_round_trips_through_its_string(
    scheme: str,
    user: str | None,
    password: str | None,
    host: str,
    port: int | None,
    params: list[tuple[str, str | None]],
    headers: list[tuple[str, str]],
) -> None:
    uri = URI(scheme, user, password if user else None, host, port, tuple(params), tuple(headers))
    assert URI.parse(str(uri)) == uri
